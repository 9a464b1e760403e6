"""Readers against the layouts real tools write: the fixture corpus (tests/fixtures/corpus.py),
read completely in a shuffled order, and the real files of /work/shared/real-data (copied
first: they are read-only and caches are written next to the data)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.corpus import CORPUS
from tests.fixtures.rlds import decode_example, read_tfrecords
from vlm4vla.data.bridge import BridgeDataModule
from vlm4vla.data.dataset import prepare_actions
from vlm4vla.data.formats.detect import open_episode_reader
from vlm4vla.data.libero import LiberoDataModule

torch.set_num_threads(1)

REAL_DATA = Path("/work/shared/real-data")
REAL_BRIDGE = REAL_DATA / "bridge_debug" / "bridge_dataset" / "1.0.0"
REAL_LIBERO = REAL_DATA / "libero_hdf5" / "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it_demo.hdf5"
JPEG_MEAN_ERROR = 3.0


def _blank(image: np.ndarray) -> bool:
    return int(image.max()) == int(image.min())


def _assert_frame(frame: np.ndarray, frames: np.ndarray, step: int, lossless: bool) -> None:
    assert frame.dtype == np.uint8 and frame.shape == frames[step].shape
    if lossless:
        np.testing.assert_array_equal(frame, frames[step])
        return
    errors = np.abs(frame.astype(np.int16)[None] - frames.astype(np.int16)).mean(axis=(1, 2, 3))
    assert errors[step] < JPEG_MEAN_ERROR, errors
    assert int(np.argmin(errors)) == step, errors  # this frame, not a neighbour


@pytest.mark.parametrize("layout", sorted(CORPUS))
def test_corpus_layout_is_read_completely_in_shuffled_order(layout: str, tmp_path: Path) -> None:
    written = CORPUS[layout](tmp_path / layout)
    reader = open_episode_reader(written["format"], written["root"], **written["keys"])
    episodes = written["episodes"]
    assert len(reader) == len(episodes)
    for e, truth in enumerate(episodes):
        assert reader.episode_length(e) == len(truth["actions"])
        assert reader.instruction(e) == truth["instruction"]
        np.testing.assert_array_equal(reader.actions(e), truth["actions"].astype(np.float32))
    pairs = [(e, t) for e, truth in enumerate(episodes) for t in range(len(truth["actions"]))]
    for i in np.random.default_rng(0).permutation(len(pairs)):
        e, t = pairs[i]
        _assert_frame(reader.frame(e, t), episodes[e]["frames"], t, written["lossless"])


# -- real files ------------------------------------------------------------------------------------
needs_real_bridge = pytest.mark.skipif(not REAL_BRIDGE.is_dir(), reason="real Bridge excerpt not present")
needs_real_libero = pytest.mark.skipif(not REAL_LIBERO.is_file(), reason="real LIBERO demo file not present")


@pytest.fixture()
def real_bridge(tmp_path: Path) -> Path:
    """A writable copy of the real TFDS-written Bridge excerpt (``bridge_dataset/1.0.0``)."""
    target = tmp_path / "bridge_dataset" / "1.0.0"
    shutil.copytree(REAL_BRIDGE, target)
    return target


def _bridge_truth(root: Path, split: str) -> list[dict]:
    """Episodes of a split decoded with the fixtures' own TFRecord/Example parser."""
    (shard,) = sorted(root.glob(f"bridge_dataset-{split}.tfrecord-*"))
    return [decode_example(payload) for payload in read_tfrecords(shard)]


@needs_real_bridge
@pytest.mark.parametrize("split", ["train", "val"])
def test_real_bridge_excerpt_reader_yields_every_episode(real_bridge: Path, split: str) -> None:
    truth = _bridge_truth(real_bridge, split)
    assert len(truth) == 25
    assert all(int(ep[f"episode_metadata/has_image_{k}"][0]) == 0 for ep in truth for k in range(4))  # the quirk
    reader = open_episode_reader("rlds", real_bridge, split=split, image_key="image_0")
    assert len(reader) == 25
    arm_actions, arm_moves = [], []
    for e, ep in enumerate(truth):
        actions = ep["steps/action"].reshape(-1, 7)
        assert 10 <= reader.episode_length(e) == len(actions) <= 12
        np.testing.assert_array_equal(reader.actions(e), actions)
        assert reader.instruction(e) == ep["steps/language_instruction"][0].decode()
        for t in np.random.default_rng(e).permutation(len(actions)):
            frame = reader.frame(e, int(t))
            with Image.open(io.BytesIO(ep["steps/observation/image_0"][t])) as image:
                np.testing.assert_array_equal(frame, np.asarray(image.convert("RGB")))
            assert frame.shape == (64, 64, 3) and not _blank(frame)
        assert _blank(reader.image(e, 0, "image_3"))  # the really missing camera
        arm_actions.append(reader.actions(e)[:-1, :3])
        arm_moves.append(np.diff(ep["steps/observation/state"].reshape(-1, 7)[:, :3], axis=0))
    assert reader.skipped_episodes == set() and len(reader.flag_ignored_episodes) == 25
    # bridge_orig relabelling: the xyz actions follow state[t+1] - state[t] of the same episode
    # (pooled correlation about 0.85 here; about 0.1 when paired with another episode's states)
    arm_actions, arm_moves = np.concatenate(arm_actions), np.concatenate(arm_moves)
    correlation = [np.corrcoef(arm_actions[:, i], arm_moves[:, i])[0, 1] for i in range(3)]
    assert min(correlation) > 0.6, correlation


@needs_real_bridge
def test_real_bridge_excerpt_trains_on_all_episodes_despite_has_image_0(real_bridge: Path) -> None:
    dm = BridgeDataModule(real_bridge.parent, chunk_size=4, batch_size=4, num_workers=0, image_augmentation=False)
    dm.setup("fit")
    train, val = _bridge_truth(real_bridge, "train"), _bridge_truth(real_bridge, "val")
    assert len(dm.train_dataset.episodes) == 25 and len(dm.val_dataset.episodes) == 25
    # bridge_orig (default) keeps steps 1..T-2 of each episode
    assert len(dm.train_dataset) == sum(len(ep["steps/action"]) // 7 - 2 for ep in train)
    assert len(dm.val_dataset) == sum(len(ep["steps/action"]) // 7 - 2 for ep in val)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape[0] == 4 and batch["actions"].shape == (4, 4, 7)


def _hysteresis(gripper: np.ndarray) -> np.ndarray:
    """OpenVLA's binarize_gripper_actions written as its docstring's loop: from the last step
    backwards, > 0.95 → 1, < 0.05 → 0, in between → the value after it (the raw last value at first)."""
    out, carry = np.empty_like(gripper), gripper[-1]
    for i in reversed(range(len(gripper))):
        if gripper[i] > 0.95:
            carry = 1.0
        elif gripper[i] < 0.05:
            carry = 0.0
        out[i] = carry
    return out


@needs_real_bridge
@pytest.mark.parametrize("split", ["train", "val"])
def test_real_bridge_bridge_orig_actions_are_state_deltas(real_bridge: Path, split: str) -> None:
    dm = BridgeDataModule(real_bridge.parent, chunk_size=4, num_workers=0, image_augmentation=False)
    index = dm.episode_index(split)  # pre-normalisation actions, after bridge_orig
    truth = _bridge_truth(real_bridge, split)
    in_between = trailing = 0
    for e, ep in enumerate(truth):
        raw = ep["steps/action"].reshape(-1, 7)
        state = ep["steps/observation/state"].reshape(-1, 7)  # float32, as TFDS wrote it
        length = len(raw)
        np.testing.assert_array_equal(index.episode_steps(e), np.arange(1, length - 1))
        actions = index.episode_actions(e)
        assert actions.shape == (length - 2, 7)
        # arm: state[t+1] - state[t] for t = 1..T-2, exactly (float32 arithmetic both sides)
        np.testing.assert_array_equal(actions[:, :6], state[2:, :6] - state[1:-1, :6])
        # gripper: hysteresis over steps 1..T-1, then the last one dropped
        np.testing.assert_array_equal(actions[:, 6], _hysteresis(raw[1:, 6])[:-1])
        middle = (raw[1:, 6] >= 0.05) & (raw[1:, 6] <= 0.95)
        in_between += int(middle.sum())
        trailing += int(middle[-1])
    assert in_between > 0 and trailing > 0  # the excerpt exercises both hysteresis cases
    # the training targets: a binarised 1 → 1, anything else (a trailing raw value) → 0
    if split == "train":
        dm.setup("fit")
        train = dm.train_dataset
        targets = prepare_actions(index.take(train.episodes).actions, dm.normalizer)[:, 6]
        np.testing.assert_array_equal(targets, (index.take(train.episodes).actions[:, 6] == 1.0).astype(np.float32))
        sample = train[0]
        assert sample["frame_index"] == 1  # the first kept frame is step 1
        np.testing.assert_array_equal(sample["image"], train.reader.frame(int(train.episodes[0]), 1))


@needs_real_libero
def test_real_libero_hdf5_every_frame_matches_h5py(tmp_path: Path) -> None:
    root = tmp_path / "libero_10"
    root.mkdir()
    shutil.copy(REAL_LIBERO, root / REAL_LIBERO.name)
    dm = LiberoDataModule(root, val_fraction=0, num_workers=0, image_augmentation=False, batch_size=2)
    dm.setup("fit")
    reader = dm.train_dataset.reader
    with h5py.File(REAL_LIBERO, "r") as f:
        demos = sorted(f["data"], key=lambda name: int(name.split("_")[1]))
        assert len(reader) == len(demos) == 3
        for e, demo in enumerate(demos):
            actions = f["data"][demo]["actions"][()]
            assert actions.dtype == np.float64  # as LIBERO's script writes them
            np.testing.assert_array_equal(reader.actions(e), actions.astype(np.float32))
            images = f["data"][demo]["obs"]["agentview_rgb"][()]
            for t in np.random.default_rng(e).permutation(len(images)):
                np.testing.assert_array_equal(reader.frame(e, int(t)), images[t])
    sample = dm.train_dataset[0]
    with h5py.File(REAL_LIBERO, "r") as f:
        first = f["data"][demos[int(dm.train_dataset.episodes[0])]]["obs"]["agentview_rgb"][0]
    np.testing.assert_array_equal(sample["image"], first[::-1, ::-1])  # rotated 180° to upright

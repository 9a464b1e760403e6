"""LIBERO and Bridge datamodules on the LeRobot (v3.0 embedded images / mp4 video, v2.1) and
RLDS formats, using the readers and fixture writers of those formats."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.fixtures.lerobot import OPENPI_LIBERO_KEYS, write_lerobot_dataset
from tests.fixtures.libero_hdf5 import libero_task_file, write_libero_hdf5
from tests.fixtures.rlds import write_rlds_dataset
from vlm4vla.data.bridge import BridgeDataModule
from vlm4vla.data.datamodule import EpisodeDataModule
from vlm4vla.data.formats.base import DatasetFormatError
from vlm4vla.data.libero import LiberoDataModule

N = 4
CLIP = 0.65  # the released second normalisation stage (LIBERO and Bridge default)


def _normalised(arm: np.ndarray, q01: np.ndarray, q99: np.ndarray) -> np.ndarray:
    """q01/q99 → [-1, 1] (clipped), then clip ±0.65 and divide by 0.65, written out by hand."""
    unit = np.clip(2 * (arm - q01[:6]) / (q99[:6] - q01[:6]) - 1, -1, 1)
    return np.clip(unit, -CLIP, CLIP) / CLIP


def _bridge_orig_rows(truth: dict) -> tuple[np.ndarray, np.ndarray]:
    """What bridge_orig should give for a fixture episode, from its written states: rows for frames
    1..T-2, arm = state[t+1, :6] - state[t, :6], gripper = the written value (the fixtures write
    only stable 0/1 or -1/+1 grippers, so the hysteresis keeps them: > 0.95 → 1, else 0)."""
    actions, state = np.asarray(truth["actions"], np.float32), np.asarray(truth["state"], np.float32)
    steps = np.arange(1, len(actions) - 1)
    arm = state[steps + 1, :6] - state[steps, :6]
    gripper = (actions[steps, 6] > 0.95).astype(np.float32)
    return np.concatenate([arm, gripper[:, None]], axis=1).astype(np.float64), steps


def _make(kind: str, fmt: str, tmp: Path) -> tuple[EpisodeDataModule, list[dict], list[dict] | None]:
    """Datamodule, written train episodes (reader order), written val episodes (RLDS only)."""
    module = BridgeDataModule if kind == "bridge" else LiberoDataModule
    common = {"chunk_size": N, "num_workers": 0, "batch_size": 4, "image_augmentation": False}
    if fmt == "rlds":
        truth = write_rlds_dataset(tmp, flavour=kind, num_episodes=4, steps=8, val_episodes=2, image_size=64)
        dm = module(tmp / truth["name"], **common)
        return dm, truth["splits"]["train"]["episodes"], truth["splits"]["val"]["episodes"]
    version, video = {
        "lerobot-v3": ("v3.0", False),
        "lerobot-v3-video": ("v3.0", True),
        "lerobot-v2.1": ("v2.1", False),
    }[fmt]
    truth = write_lerobot_dataset(tmp / "lerobot", num_episodes=5, steps=8, version=version, video=video)
    dm = module(tmp / "lerobot", val_fraction=0.2, **common)
    return dm, truth["episodes"], None


CASES = [
    ("bridge", "rlds"),
    ("bridge", "lerobot-v3"),
    ("libero", "rlds"),
    ("libero", "lerobot-v3-video"),
    ("libero", "lerobot-v2.1"),
]


@pytest.mark.parametrize(("kind", "fmt"), CASES)
def test_samples_match_written_episodes(kind: str, fmt: str, tmp_path: Path) -> None:
    # Defaults: Bridge trains on bridge_orig-relabelled actions, both on q01/q99 then ±0.65.
    dm, train_truth, val_truth = _make(kind, fmt, tmp_path)
    dm.setup("fit")
    assert dm.resolved_format == fmt.split("-")[0]
    ds = dm.train_dataset

    def rows(truth: dict) -> tuple[np.ndarray, np.ndarray]:  # pre-normalisation rows, their frames
        if kind == "bridge":
            return _bridge_orig_rows(truth)
        actions = np.asarray(truth["actions"], np.float64)
        return actions, np.arange(len(actions))

    if val_truth is not None:  # RLDS val split used as is
        assert len(dm.val_dataset) == sum(len(rows(e)[1]) for e in val_truth)
    else:
        assert set(ds.episodes.tolist()).isdisjoint(dm.val_dataset.episodes.tolist())
    raw_train = np.concatenate([rows(train_truth[e])[0] for e in ds.episodes])
    q01, q99 = np.quantile(raw_train, [0.01, 0.99], axis=0)
    for index in (0, 3, int(ds.lengths[0]) - 1, len(ds) - 1):
        sample = ds[index]
        ep, t = sample["episode_index"], sample["frame_index"]
        truth = train_truth[ep]
        actions, frames = rows(truth)
        r = int(np.searchsorted(frames, t))  # the sample's row; its frame is reader step t
        assert frames[r] == t
        assert (
            sample["image"].dtype == np.uint8 and sample["image"].ndim == 3 and sample["image"].shape[2] == 3
        )
        assert sample["actions"].dtype == torch.float32 and sample["actions"].shape == (N, 7)
        assert sample["instruction"] == truth["instruction"]
        steps = np.minimum(r + np.arange(N), len(actions) - 1)
        np.testing.assert_allclose(sample["actions"][:, :6].numpy(), _normalised(actions[steps, :6], q01, q99), atol=1e-5)
        gripper = actions[steps, 6] >= 1.0 if kind == "bridge" else actions[steps, 6] > 0
        np.testing.assert_array_equal(sample["actions"][:, 6].numpy(), gripper.astype(np.float32))
        np.testing.assert_array_equal(sample["action_mask"].numpy(), r + np.arange(N) < len(actions))
        # RLDS and LeRobot ports store upright images: used as stored
        np.testing.assert_array_equal(sample["image"], ds.reader.frame(ep, t))
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].dtype == torch.uint8 and batch["actions"].shape == (4, N, 7)


def test_bridge_rlds_skips_episodes_without_primary_camera(tmp_path: Path) -> None:
    truth = write_rlds_dataset(
        tmp_path,
        flavour="bridge",
        num_episodes=4,
        steps=6,
        val_episodes=1,
        image_size=32,
        missing_primary=(1,),
    )
    dm = BridgeDataModule(tmp_path / truth["name"], chunk_size=N, num_workers=0, image_augmentation=False)
    dm.setup("fit")
    assert 1 not in dm.train_dataset.episodes.tolist()
    assert len(dm.train_dataset) == sum(  # bridge_orig: T - 2 rows per episode
        e["length"] - 2 for i, e in enumerate(truth["splits"]["train"]["episodes"]) if i != 1
    )


def test_bridge_rlds_bad_crc_names_the_file(tmp_path: Path) -> None:
    truth = write_rlds_dataset(
        tmp_path, flavour="bridge", num_episodes=2, steps=4, val_episodes=1, image_size=32
    )
    shard = Path(truth["splits"]["train"]["files"][0])
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF  # inside the first payload
    shard.write_bytes(bytes(data))
    dm = BridgeDataModule(tmp_path / truth["name"], chunk_size=N, num_workers=0)
    with pytest.raises(DatasetFormatError, match=rf"{shard.name}.*CRC"):
        dm.setup("fit")


def test_bridge_rejects_hdf5_and_detects_nothing(tmp_path: Path) -> None:
    (tmp_path / "x.hdf5").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match=r"no dataset found \(looked for features.json"):
        BridgeDataModule(tmp_path, num_workers=0).setup("fit")


@pytest.mark.parametrize(("kind", "fmt"), [("libero", "lerobot-v3-video"), ("bridge", "rlds")])
def test_worker_processes_give_identical_batches(kind: str, fmt: str, tmp_path: Path) -> None:
    def batches(workers: int) -> list[dict]:
        dm, _, _ = _make(kind, fmt, tmp_path / f"w{workers}")
        dm.num_workers, dm.image_augmentation = workers, True
        dm.setup("fit")
        return [b for _, b in zip(range(3), dm.train_dataloader(), strict=False)]

    for x, y in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["actions"], y["actions"])


# -- feature keys and layouts real tools write (issue 10, items 15, 17, 18) ------------------------
def test_libero_datamodule_reads_openpi_lerobot_port(tmp_path: Path) -> None:
    # openpi's LIBERO port: image / wrist_image / state / actions (lerobot v2.0, embedded PNGs).
    truth = write_lerobot_dataset(tmp_path, version="v2.0", num_episodes=4, steps=10, image_size=32,
                                  row_group_size="file", **OPENPI_LIBERO_KEYS)  # fmt: skip
    with pytest.raises(DatasetFormatError, match=r"info\.json: missing field 'features\.action' \(non-image features"):
        LiberoDataModule(tmp_path, format="lerobot", num_workers=0).setup("fit")
    dm = LiberoDataModule(tmp_path, format="lerobot", action_key="actions", image_key="image", chunk_size=N,
                          num_workers=0, val_fraction=0.25, image_augmentation=False)  # fmt: skip
    dm.setup("fit")
    ds = dm.train_dataset
    assert sorted(ds.episodes.tolist() + dm.val_dataset.episodes.tolist()) == [0, 1, 2, 3]
    raw = np.concatenate([truth["episodes"][e]["actions"] for e in ds.episodes]).astype(np.float64)
    q01, q99 = np.quantile(raw, [0.01, 0.99], axis=0)
    for index in range(len(ds)):
        sample = ds[index]
        episode = truth["episodes"][sample["episode_index"]]
        t = sample["frame_index"]
        np.testing.assert_array_equal(sample["image"], episode["frames"][t])  # image, not wrist_image
        assert sample["instruction"] == episode["instruction"]
        steps = np.minimum(t + np.arange(N), episode["length"] - 1)
        np.testing.assert_allclose(sample["actions"][:, :6].numpy(), _normalised(episode["actions"][steps, :6], q01, q99),
                                   atol=1e-5)  # fmt: skip


def test_feature_keys_reach_the_hdf5_reader(tmp_path: Path) -> None:
    root = write_libero_hdf5(tmp_path / "libero_10", num_tasks=1, demos_per_task=2, steps=6)
    dm = LiberoDataModule(root, action_key="obs/joint_states", image_key="eye_in_hand_rgb", num_workers=0,
                          val_fraction=0, image_augmentation=False)  # fmt: skip
    dm.setup("fit")
    reader = dm.train_dataset.reader
    path = root / libero_task_file(0)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(reader.actions(1), f["data/demo_1/obs/joint_states"][()].astype(np.float32))
        np.testing.assert_array_equal(reader.frame(1, 2), f["data/demo_1/obs/eye_in_hand_rgb"][2])
    with pytest.raises(DatasetFormatError, match=rf"{path.name}: missing field 'data/demo_0/act' \(has: actions, dones,"):
        LiberoDataModule(root, action_key="act", num_workers=0).setup("fit")
    with pytest.raises(ValueError, match=r"instruction_key='task' applies to the rlds format only"):
        LiberoDataModule(root, instruction_key="task", num_workers=0).setup("fit")


def test_feature_keys_reach_the_rlds_reader(tmp_path: Path) -> None:
    truth = write_rlds_dataset(tmp_path, flavour="libero", num_episodes=3, steps=4, val_episodes=1, image_size=16)
    dm = LiberoDataModule(tmp_path / truth["name"], image_key="wrist_image", action_key="steps/action",
                          instruction_key="language_instruction", num_workers=0, image_augmentation=False)  # fmt: skip
    dm.setup("fit")
    reader = dm.train_dataset.reader
    assert (reader.image_key, reader.action_key) == ("steps/observation/wrist_image", "steps/action")
    wrist = truth["splits"]["train"]["episodes"][1]["frames"]["wrist_image"]
    errors = np.abs(reader.frame(1, 2).astype(int)[None] - wrist.astype(int)).mean(axis=(1, 2, 3))
    assert int(np.argmin(errors)) == 2 and errors[2] < 3.0


def test_bridge_blank_camera_skips_are_counted_not_reported_as_nan(tmp_path: Path, caplog) -> None:
    truth = write_rlds_dataset(tmp_path / "some", flavour="bridge", num_episodes=4, steps=5, val_episodes=1,
                               image_size=16, missing_primary=(0, 2), has_image_flags="zero")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="vlm4vla.data.datamodule"):
        dm = BridgeDataModule(tmp_path / "some" / truth["name"], chunk_size=N, num_workers=0)
        dm.setup("fit")
    assert dm.train_dataset.episodes.tolist() == [1, 3]
    assert "skipped 2 episode(s) without frames (blank primary camera or no steps) in the train split" in caplog.text
    assert "NaN" not in caplog.text
    # every training episode blank: say so, not "no training episodes with finite actions"
    blank = write_rlds_dataset(tmp_path / "blank", flavour="bridge", num_episodes=2, steps=3, val_episodes=1,
                               image_size=16, missing_primary=(0, 1))  # fmt: skip
    with pytest.raises(DatasetFormatError, match=r"no training episodes with frames \(2 skipped for a blank primary"):
        BridgeDataModule(tmp_path / "blank" / blank["name"], num_workers=0).setup("fit")


def test_bridge_datamodule_root_above_versioned_folder(tmp_path: Path) -> None:
    truth = write_rlds_dataset(tmp_path / "tfds", flavour="bridge", num_episodes=1, steps=3, val_episodes=0,
                               image_size=16)  # fmt: skip
    with pytest.raises(DatasetFormatError, match=rf"no dataset found .*found the RLDS dataset {truth['root']} below"):
        BridgeDataModule(tmp_path / "tfds", num_workers=0).setup("fit")

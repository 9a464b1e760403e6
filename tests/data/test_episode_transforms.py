"""Released-code parity of the data (issue 12): Bridge ``bridge_orig`` relabelling, the LIBERO
no-op filter, LIBERO RLDS (``libero_10_no_noops``) orientation and split, recorded options.

Every expectation is written out by hand from the behaviour of OpenVLA's code
(``binarize_gripper_actions``, ``relabel_bridge_actions``, ``bridge_orig_dataset_transform``,
``is_noop`` in ``regenerate_libero_dataset.py``), not taken from the implementation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.lerobot import write_lerobot_dataset
from tests.fixtures.libero_hdf5 import libero_task_file, replace_dataset, write_libero_hdf5
from tests.fixtures.rlds import write_rlds_dataset
from vlm4vla.data.bridge import BridgeDataModule
from vlm4vla.data.episode_transforms import (
    BridgeOrig,
    DropNoops,
    binarize_gripper,
    noop_kept_steps,
    relabel_bridge_actions,
)
from vlm4vla.data.episodes import build_episode_index, holdout_split
from vlm4vla.data.formats.base import DatasetFormatError
from vlm4vla.data.formats.hdf5_libero import LiberoHDF5Reader
from vlm4vla.data.formats.lerobot import LeRobotReader
from vlm4vla.data.libero import LiberoDataModule
from vlm4vla.data.synthetic import decode_identity, has_marker_top_left
from vlm4vla.imaging import rotate_180

N = 4


# -- gripper hysteresis ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # the sequence: .5 before .02 → closed (0); .5 before .99 → open (1)
        ([1, 0.97, 0.5, 0.02, 0.5, 0.99], [1, 1, 0, 0, 1, 1]),
        # a trailing in-between run has no stable value after it: the raw last value (0.7)
        ([0.0, 0.5, 0.7], [0, 0.7, 0.7]),
        ([0.3, 0.6], [0.6, 0.6]),
        # thresholds are strict: 0.95 and 0.05 are in between
        ([0.95, 0.05, 1.0], [1, 1, 1]),
        ([0.96, 0.04], [1, 0]),
        ([], []),
    ],
)
def test_gripper_hysteresis_hand_computed(raw: list, expected: list) -> None:
    out = binarize_gripper(np.asarray(raw, dtype=np.float32))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(expected, dtype=np.float32))


def test_relabel_uses_reached_states_and_drops_the_last_step() -> None:
    states = np.array([[0, 0, 0, 0, 0, 0, 9], [1, 2, 3, 4, 5, 6, 9], [3, 2, 1, 0, 0, 0, 9]], np.float32)
    actions = np.array([[7, 7, 7, 7, 7, 7, 0.0], [7, 7, 7, 7, 7, 7, 1.0], [7, 7, 7, 7, 7, 7, 0.0]], np.float32)
    out = relabel_bridge_actions(actions, states)
    np.testing.assert_array_equal(out, [[1, 2, 3, 4, 5, 6, 0], [2, 0, -2, -4, -5, -6, 1]])


# A Bridge episode with known states and gripper (T = 5). x = 0, 1, 3, 6, 10 (so the deltas are
# 1, 2, 3, 4), y = x / 2, z = -x, roll 0, pitch = x / 4, yaw constant; all exact in float32.
X = np.array([0, 1, 3, 6, 10], np.float32)
KNOWN_STATE = np.stack([X, X / 2, -X, 0 * X, X / 4, 0 * X + 7, 0 * X + 0.5], axis=1)
KNOWN_GRIPPER = np.array([0.0, 1.0, 0.5, 0.0, 0.3], np.float32)  # raw absolute openings
KNOWN_ACTIONS = np.concatenate([np.full((5, 6), 9.0, np.float32), KNOWN_GRIPPER[:, None]], axis=1)
# bridge_orig by hand: drop step 0 → steps 1..4, gripper [1, .5, 0, .3] → hysteresis [1, 0, 0, .3]
# → relabel rows for steps 1, 2, 3 (step 4 has no next state): arm = state[t+1] - state[t].
KNOWN_EXPECTED = np.array(
    [
        [2, 1, -2, 0, 0.5, 0, 1],  # t = 1: x 1 → 3
        [3, 1.5, -3, 0, 0.75, 0, 0],  # t = 2: x 3 → 6; .5 before the 0 → closed
        [4, 2, -4, 0, 1, 0, 0],  # t = 3: x 6 → 10
    ],
    np.float32,
)


def test_bridge_orig_transform_on_known_states() -> None:
    actions, steps = BridgeOrig()(KNOWN_ACTIONS, KNOWN_STATE)
    np.testing.assert_array_equal(actions, KNOWN_EXPECTED)
    np.testing.assert_array_equal(steps, [1, 2, 3])
    short, none = BridgeOrig()(KNOWN_ACTIONS[:2], KNOWN_STATE[:2])
    assert short.shape == (0, 7) and none.shape == (0,)


@pytest.fixture
def known_bridge(tmp_path: Path) -> Path:
    """Bridge RLDS: train episode 0 = the known episode above, 1 = unlabeled, 2 = two steps only
    (nothing left after bridge_orig), 3 = random; one val episode."""
    truth = write_rlds_dataset(
        tmp_path,
        flavour="bridge",
        num_episodes=4,
        steps=6,
        val_episodes=1,
        image_size=16,
        overrides={
            0: {"actions": KNOWN_ACTIONS, "state": KNOWN_STATE},
            1: {"instruction": ""},
            2: {"actions": KNOWN_ACTIONS[:2], "state": KNOWN_STATE[:2]},
        },
    )
    return truth["root"]


def test_bridge_datamodule_relabels_from_rlds_states(known_bridge: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="vlm4vla.data.datamodule"):
        dm = BridgeDataModule(known_bridge, chunk_size=N, num_workers=0, image_augmentation=False)
        dm.setup("fit")
    index = dm.episode_index("train")
    np.testing.assert_array_equal(index.episode_actions(0), KNOWN_EXPECTED)  # before normalisation
    np.testing.assert_array_equal(index.episode_steps(0), [1, 2, 3])
    assert index.lengths.tolist()[2] == 0  # T = 2: nothing left
    # the unlabeled episode (1) and the empty one (2) are skipped and counted
    assert dm.train_dataset.episodes.tolist() == [0, 3]
    assert "skipped 1 episode(s) without a language instruction in the train split (bridge_orig)" in caplog.text
    assert "skipped 1 episode(s) without frames" in caplog.text
    # statistics on the transformed actions of the training episodes used
    used = np.concatenate([index.episode_actions(0), index.episode_actions(3)]).astype(np.float64)
    np.testing.assert_allclose(dm.normalizer.low, np.quantile(used[:, :6], 0.01, axis=0), atol=1e-6)
    np.testing.assert_allclose(dm.normalizer.high, np.quantile(used[:, :6], 0.99, axis=0), atol=1e-6)
    assert dm.normalizer.stats["count"] == 3 + int(index.lengths[3])
    # samples: frame of step 1 first, gripper targets 1, 0, 0, masked past the end
    sample = dm.train_dataset[0]
    assert sample["frame_index"] == 1 and sample["episode_index"] == 0
    np.testing.assert_array_equal(sample["image"], dm.train_dataset.reader.frame(0, 1))
    assert sample["actions"][:, 6].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert sample["action_mask"].tolist() == [True, True, True, False]
    assert dm.train_dataset[2]["frame_index"] == 3


def test_bridge_raw_actions_when_the_transform_is_off(known_bridge: Path) -> None:
    dm = BridgeDataModule(known_bridge, chunk_size=N, num_workers=0, image_augmentation=False, action_transform=None)
    dm.setup("fit")
    index = dm.episode_index("train")
    np.testing.assert_array_equal(index.episode_actions(0), KNOWN_ACTIONS)
    np.testing.assert_array_equal(index.episode_steps(0), np.arange(5))
    assert dm.train_dataset.episodes.tolist() == [0, 1, 2, 3]  # unlabeled and short ones used as stored
    # the old gripper rule: >= 0.5 → 1 (0.0, 1.0, 0.5, 0.0, 0.3 → 0, 1, 1, 0, 0)
    assert dm.train_dataset[0]["actions"][:, 6].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert dm.train_dataset[1]["actions"][:, 6].tolist() == [1.0, 1.0, 0.0, 0.0]
    # the index cache and the statistics are keyed on the transform: both coexist
    on = BridgeDataModule(known_bridge, chunk_size=N, num_workers=0)
    assert on.stats_key() != dm.stats_key()
    assert len(list((known_bridge / "vlm4vla_cache").glob("bridge-rlds-train-*.npz"))) == 1
    on.setup("fit")
    assert len(list((known_bridge / "vlm4vla_cache").glob("bridge-rlds-train-*.npz"))) == 2
    assert on.episode_index("train").lengths[0] == 3 and dm.episode_index("train").lengths[0] == 5
    with pytest.raises(ValueError, match="action_transform must be 'bridge_orig' or None"):
        BridgeDataModule(known_bridge, action_transform="bridge_oxe")


def test_bridge_orig_needs_states(tmp_path: Path) -> None:
    truth = write_rlds_dataset(tmp_path, flavour="bridge", num_episodes=2, steps=4, val_episodes=0, image_size=16)
    dm = BridgeDataModule(truth["root"], state_key="proprio", num_workers=0)
    with pytest.raises(DatasetFormatError, match=r"features\.json: missing field 'steps/observation/proprio'"):
        dm.setup("fit")
    hdf5 = write_libero_hdf5(tmp_path / "libero_10", num_tasks=1, demos_per_task=1, steps=4)
    with pytest.raises(DatasetFormatError, match=r"demo_0: this transform needs observation states, which the "
                                                 r"LiberoHDF5Reader reader does not provide"):  # fmt: skip
        build_episode_index(LiberoHDF5Reader(hdf5), BridgeOrig())


def test_lerobot_reader_states(tmp_path: Path) -> None:
    truth = write_lerobot_dataset(tmp_path / "lerobot", num_episodes=3, steps=5, row_group_size=4)
    reader = LeRobotReader(tmp_path / "lerobot")
    for e, episode in enumerate(truth["episodes"]):
        states = reader.states(e)
        assert states.dtype == np.float32
        np.testing.assert_array_equal(states, episode["state"])
    with pytest.raises(DatasetFormatError, match=r"missing field 'observation.proprio' \(has: "):
        reader.states(0, "observation.proprio")


# -- LIBERO no-op filter ---------------------------------------------------------------------------
# Hand-built LIBERO actions (arm 6 + gripper): which steps OpenVLA's is_noop drops.
NOOP_ACTIONS = np.array(
    [
        [0, 0, 0, 0, 0, 0, -1],  # 0: nothing kept yet, arm ~0 → no-op
        [0, 0, 0, 0, 0, 0, 1],  # 1: still nothing kept: the arm alone decides → no-op
        [0.1, 0, 0, 0, 0, 0, 1],  # 2: moves → kept
        [5e-5, 0, 0, 0, 0, 0, 1],  # 3: |arm| 5e-5 < 1e-4, gripper = kept 2's → no-op
        [0, 0, 0, 0, 0, 0, -1],  # 4: arm ~0 but the gripper changes → kept
        [0, 0, 0, 0, 0, 0, -1],  # 5: same gripper as kept 4 → no-op
        [0, 0, 2e-4, 0, 0, 0, -1],  # 6: |arm| 2e-4 >= 1e-4 → kept
        [0, 0, 0, 0, 0, 0, -1],  # 7: → no-op
    ],
    np.float64,
)
NOOP_KEPT = [2, 4, 6]


def test_noop_filter_hand_computed() -> None:
    np.testing.assert_array_equal(noop_kept_steps(NOOP_ACTIONS), NOOP_KEPT)
    actions, steps = DropNoops()(NOOP_ACTIONS.astype(np.float32), None)
    np.testing.assert_array_equal(steps, NOOP_KEPT)
    np.testing.assert_array_equal(actions, NOOP_ACTIONS[NOOP_KEPT].astype(np.float32))
    again, _ = DropNoops()(actions, None)
    np.testing.assert_array_equal(again, actions)  # nothing left to drop in no-op-free data


def test_libero_drop_noops_drops_frames_and_actions_together(tmp_path: Path) -> None:
    root = write_libero_hdf5(tmp_path / "libero_10", num_tasks=1, demos_per_task=2, steps=8)
    replace_dataset(root / libero_task_file(0), "data/demo_0/actions", NOOP_ACTIONS)
    common = {"chunk_size": N, "num_workers": 0, "image_augmentation": False, "val_fraction": 0}
    plain = LiberoDataModule(root, **common)
    plain.setup("fit")
    assert plain.train_dataset.lengths.tolist() == [8, 9]  # default: every step
    dm = LiberoDataModule(root, drop_noops=True, **common)
    dm.setup("fit")
    index = dm.episode_index("train")
    np.testing.assert_array_equal(index.episode_steps(0), NOOP_KEPT)
    np.testing.assert_array_equal(index.episode_actions(0), NOOP_ACTIONS[NOOP_KEPT].astype(np.float32))
    assert dm.train_dataset.lengths[0] == 3
    for row, step in enumerate(NOOP_KEPT):  # each kept action comes with its own frame, upright
        sample = dm.train_dataset[row]
        assert sample["frame_index"] == step
        assert has_marker_top_left(sample["image"]) and decode_identity(sample["image"]) == (0, step)
    assert dm.train_dataset[0]["action_mask"].tolist() == [True, True, True, False]
    assert dm.stats_key() != plain.stats_key()  # statistics of the filtered steps, cached apart
    assert dm.normalizer.stats["count"] == 3 + int(index.lengths[1])
    assert dm.state_dict()["data_options"]["episode_transform"] == "drop_noops"


# -- LIBERO RLDS (libero_10_no_noops) ------------------------------------------------------------
def test_libero_rlds_without_val_split_and_upright_like_hdf5(tmp_path: Path) -> None:
    # openvla's libero_10_no_noops: 256² (its re-render size), HDF5 frames rotated 180° (upright)
    hdf5 = write_libero_hdf5(tmp_path / "libero_10", num_tasks=1, demos_per_task=2, steps=6, image_size=256)
    hdf5_dm = LiberoDataModule(hdf5, chunk_size=N, num_workers=0, image_augmentation=False, val_fraction=0)
    hdf5_dm.setup("fit")
    reader = hdf5_dm.train_dataset.reader
    overrides = {
        e: {
            "actions": reader.actions(e),
            "frames": {"image": np.stack([rotate_180(reader.frame(e, t)) for t in range(reader.episode_length(e))])},
            "instruction": reader.instruction(e),
        }
        for e in range(len(reader))
    }
    truth = write_rlds_dataset(tmp_path / "rlds", flavour="libero", num_episodes=2, val_episodes=0, image_size=256,
                               overrides=overrides)  # fmt: skip
    assert truth["name"] == "libero_10_no_noops"
    dm = LiberoDataModule(truth["root"].parent, format="rlds", val_fraction=0, chunk_size=N, num_workers=0,
                          image_augmentation=False)  # fmt: skip
    dm.setup("fit")
    assert dm.train_dataset.reader.image_key == "steps/observation/image"
    assert dm.train_dataset[0]["image"].shape == (256, 256, 3)
    assert dm.val_dataset is not None and len(dm.val_dataset) == 0 and dm.val_dataloader() == []
    assert dm.train_dataset.episodes.tolist() == [0, 1] and len(dm.train_dataset) == 6 + 7
    for index in (0, 5, 6, 12):
        rlds_image, hdf5_image = dm.train_dataset[index]["image"], hdf5_dm.train_dataset[index]["image"]
        assert has_marker_top_left(hdf5_image)
        error = np.abs(rlds_image.astype(int) - hdf5_image.astype(int)).mean()
        flipped = np.abs(rlds_image.astype(int) - hdf5_image[::-1, ::-1].astype(int)).mean()
        assert error < 8.0 < 40.0 < flipped, (error, flipped)  # same upright view (JPEG aside)
    np.testing.assert_allclose(dm.normalizer.low, hdf5_dm.normalizer.low, atol=1e-6)


def test_outcome_options_are_recorded(known_bridge: Path) -> None:
    dm = BridgeDataModule(known_bridge, num_workers=0, action_clip=None)
    assert dm.state_dict()["data_options"] == {
        "episode_transform": "bridge_orig", "state_key": None, "action_clip": None, "val_fraction": 0.05,
        "holdout": "random",
    }  # fmt: skip
    assert dm.normalizer.action_clip is None and dm.normalizer.to_dict()["action_clip"] is None
    assert BridgeDataModule(known_bridge, num_workers=0).normalizer.to_dict()["action_clip"] == 0.65
    with pytest.raises(ValueError, match=r"action_clip must be in \(0, 1\]"):
        BridgeDataModule(known_bridge, action_clip=1.5)


@pytest.mark.parametrize(
    ("count", "fraction", "train"),
    [
        (379, 0.05, 360),  # libero_10_no_noops: TFDS train[:95%] = round(360.05) = 360 episodes
        (10, 0.05, 10),  # round(9.5) = 10 (round half to even, as TFDS's round): nothing held out
        (20, 0.05, 19),
        (7, 0.0, 7),
    ],
)
def test_last_holdout_is_tfds_percent_slicing(count: int, fraction: float, train: int) -> None:
    first, rest = holdout_split(count, fraction, seed=0, mode="last")
    np.testing.assert_array_equal(first, np.arange(train))
    np.testing.assert_array_equal(rest, np.arange(train, count))


def test_last_holdout_in_the_datamodule(tmp_path: Path) -> None:
    truth = write_rlds_dataset(tmp_path, flavour="libero", num_episodes=5, steps=3, val_episodes=0, image_size=16)
    dm = LiberoDataModule(truth["root"], val_fraction=0.2, holdout="last", num_workers=0, image_augmentation=False)
    dm.setup("fit")
    assert dm.train_dataset.episodes.tolist() == [0, 1, 2, 3] and dm.val_dataset.episodes.tolist() == [4]
    assert dm.stats_key() != LiberoDataModule(truth["root"], val_fraction=0.2, num_workers=0).stats_key()
    with pytest.raises(ValueError, match="holdout must be one of"):
        LiberoDataModule(truth["root"], holdout="first")


def test_stats_command_takes_the_parity_options(known_bridge: Path, tmp_path: Path, capsys) -> None:
    import json

    from vlm4vla.data.stats import main as stats_main

    assert stats_main(["bridge", str(known_bridge)]) == 0
    released = json.loads(capsys.readouterr().out)
    assert released["action_clip"] == 0.65 and released["gripper"]["target_threshold"] == 1.0
    assert stats_main(["bridge", str(known_bridge), "--raw-actions", "--action-clip", "none"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert raw["action_clip"] is None and "target_threshold" not in raw["gripper"]
    # train episodes of 5 (known), 7 (unlabeled), 2 and 6 steps: raw uses every step; bridge_orig
    # keeps T - 2 of the labeled ones with frames left (5 → 3, 6 → 4)
    assert raw["stats"]["count"] == 5 + 7 + 2 + 6 and released["stats"]["count"] == 3 + 4
    hdf5 = write_libero_hdf5(tmp_path / "libero_10", num_tasks=1, demos_per_task=1, steps=8)
    replace_dataset(hdf5 / libero_task_file(0), "data/demo_0/actions", NOOP_ACTIONS)
    assert stats_main(["libero", str(hdf5), "--val-fraction", "0", "--drop-noops"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["count"] == len(NOOP_KEPT)
    assert stats_main(["libero", str(hdf5), "--raw-actions"]) == 2
    assert "--raw-actions applies to bridge" in capsys.readouterr().err

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.fixtures.calvin import truncate_file
from tests.fixtures.libero_hdf5 import libero_task_file, replace_dataset, write_libero_hdf5
from vlm4vla.data import cache
from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader
from vlm4vla.data.formats.hdf5_libero import LiberoHDF5Reader
from vlm4vla.data.libero import LiberoDataModule
from vlm4vla.data.stats import compute_stats
from vlm4vla.data.stats import main as stats_main
from vlm4vla.data.synthetic import decode_identity, has_marker_top_left
from vlm4vla.imaging import libero_image_to_upright, resize_image
from vlm4vla.policy.action_space import QuantileNormalizer

N = 4


def _datamodule(root: Path, **kwargs) -> LiberoDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("val_fraction", 0.34)
    dm = LiberoDataModule(root, chunk_size=N, **kwargs)
    dm.setup("fit")
    return dm


def _demo(root: Path, episode: int) -> tuple[Path, str]:
    task, demo = divmod(episode, 3)
    return root / libero_task_file(task), f"data/demo_{demo}"


def test_fixture_is_faithful(libero_root: Path) -> None:
    with h5py.File(root_file := libero_root / libero_task_file(0), "r") as f:
        data = f["data"]
        assert json.loads(data.attrs["problem_info"])["language_instruction"].startswith("put both")
        for key in (
            "env_name",
            "env_args",
            "bddl_file_name",
            "bddl_file_content",
            "macros_image_convention",
            "num_demos",
            "total",
        ):
            assert key in data.attrs
        demo = data["demo_1"]
        assert {"num_samples", "model_file", "init_state"} <= set(demo.attrs)
        assert demo["actions"].shape == (21, 7) and demo["actions"].dtype == np.float64
        assert demo["dones"].dtype == np.uint8 and demo["dones"][-1] == 1
        assert (
            demo["obs/agentview_rgb"].shape == (21, 128, 128, 3)
            and demo["obs/agentview_rgb"].dtype == np.uint8
        )
        for key in ("eye_in_hand_rgb", "ee_states", "ee_pos", "ee_ori", "gripper_states", "joint_states"):
            assert f"obs/{key}" in demo
        stored = demo["obs/agentview_rgb"][0]
    assert root_file.name.endswith("_demo.hdf5")
    assert not has_marker_top_left(stored) and has_marker_top_left(stored[::-1, ::-1])  # stored upside down


def test_reader_implements_protocol_and_pickles_without_handles(libero_root: Path) -> None:
    reader = LiberoHDF5Reader(libero_root)
    assert isinstance(reader, EpisodeReader)
    assert len(reader) == 6 and [reader.episode_length(e) for e in range(3)] == [20, 21, 22]
    assert reader.actions(1).dtype == np.float32 and reader.actions(1).shape == (21, 7)
    assert reader.frame(1, 3).shape == (128, 128, 3)  # opens a handle
    clone = pickle.loads(pickle.dumps(reader))
    assert not clone._handles
    np.testing.assert_array_equal(clone.frame(1, 3), reader.frame(1, 3))
    assert reader.episode_source(4).endswith(f"{libero_task_file(1)}:data/demo_1")
    reader.close()


def test_samples_match_the_hdf5(libero_root: Path) -> None:
    dm = _datamodule(libero_root, image_augmentation=False)
    ds = dm.train_dataset
    train_eps = ds.episodes
    raw_train = []
    for ep in train_eps:
        path, demo = _demo(libero_root, int(ep))
        with h5py.File(path, "r") as f:
            raw_train.append(f[demo]["actions"][()])
    q01, q99 = np.quantile(np.concatenate(raw_train), [0.01, 0.99], axis=0)
    for index in (0, 5, 19, 20, len(ds) - 1):
        sample = ds[index]
        ep, t = sample["episode_index"], sample["frame_index"]
        path, demo = _demo(libero_root, ep)
        with h5py.File(path, "r") as f:
            actions = f[demo]["actions"][()]
            stored = f[demo]["obs/agentview_rgb"][t]
            instruction = json.loads(f["data"].attrs["problem_info"])["language_instruction"]
        assert sample["image"].dtype == np.uint8 and sample["image"].shape == (128, 128, 3)
        assert sample["actions"].dtype == torch.float32 and sample["actions"].shape == (N, 7)
        assert sample["action_mask"].dtype == torch.bool and sample["action_mask"].shape == (N,)
        assert sample["instruction"] == instruction
        steps = np.minimum(t + np.arange(N), len(actions) - 1)
        expected = np.clip(2 * (actions[steps, :6] - q01[:6]) / (q99[:6] - q01[:6]) - 1, -1, 1)
        expected = np.clip(expected, -0.65, 0.65) / 0.65  # the released second stage (default)
        np.testing.assert_allclose(sample["actions"][:, :6].numpy(), expected, atol=1e-5)
        np.testing.assert_array_equal(
            sample["actions"][:, 6].numpy(), (actions[steps, 6] > 0).astype(np.float32)
        )
        np.testing.assert_array_equal(sample["action_mask"].numpy(), t + np.arange(N) < len(actions))
        # orientation: samples are upright = stored image rotated 180°, the evaluator's convention
        np.testing.assert_array_equal(sample["image"], libero_image_to_upright(stored))
        assert has_marker_top_left(sample["image"])
        assert decode_identity(sample["image"]) == (ep, t)


def test_mask_and_padding_at_episode_end(libero_root: Path) -> None:
    dm = _datamodule(libero_root, image_augmentation=False)
    ds = dm.train_dataset
    length = int(ds.lengths[0])
    last, two_left = ds[length - 1], ds[length - 2]
    assert last["action_mask"].tolist() == [True, False, False, False]
    assert torch.equal(last["actions"][1:], last["actions"][:1].expand(3, 7))
    assert two_left["action_mask"].tolist() == [True, True, False, False]
    assert torch.equal(two_left["actions"][2:], two_left["actions"][1:2].expand(2, 7))
    assert ds[length]["frame_index"] == 0 and ds[length]["action_mask"].all()


def test_gripper_mapping(libero_root: Path) -> None:
    dm = _datamodule(libero_root, image_augmentation=False)
    reader = LiberoHDF5Reader(libero_root)
    for index in range(0, len(dm.train_dataset), 7):
        sample = dm.train_dataset[index]
        raw = reader.actions(sample["episode_index"])[sample["frame_index"], 6]
        assert raw in (-1.0, 1.0)
        assert sample["actions"][0, 6].item() == (1.0 if raw == 1.0 else 0.0)  # +1 close → 1
    assert dm.normalizer.gripper.to_env(np.array([0.2, 0.8])).tolist() == [-1.0, 1.0]


def test_split_by_episode_with_fixed_seed(libero_root: Path) -> None:
    dm = _datamodule(libero_root)
    train, val = set(dm.train_dataset.episodes.tolist()), set(dm.val_dataset.episodes.tolist())
    assert not train & val and train | val == set(range(6)) and len(val) == 2
    again = _datamodule(libero_root, seed=123)  # training seed does not move the split
    assert set(again.val_dataset.episodes.tolist()) == val
    others = {
        tuple(_datamodule(libero_root, split_seed=s).val_dataset.episodes.tolist()) for s in range(1, 6)
    }
    assert len(others | {tuple(sorted(val))}) > 1
    assert _datamodule(libero_root, val_fraction=0.0).val_dataloader() == []
    assert dm.val_dataset.transform is None and dm.train_dataset.transform is not None


def test_augmentation_and_deterministic_order(libero_root: Path) -> None:
    def first_batches(seed: int, workers: int) -> list[dict]:
        dm = _datamodule(libero_root, seed=seed, num_workers=workers, batch_size=5)
        loader = dm.train_dataloader()
        return [b for _, b in zip(range(3), loader, strict=False)]

    ref = first_batches(7, 0)
    for x, y in zip(ref, first_batches(7, 2), strict=True):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["actions"], y["actions"])
    assert not all(torch.equal(x["actions"], y["actions"]) for x, y in zip(ref, first_batches(8, 0), strict=True))
    dm = _datamodule(libero_root)
    plain = _datamodule(libero_root, image_augmentation=False).train_dataset[(3, 0)]["image"]
    plain = resize_image(plain, 224, "lanczos")  # the augmentation resizes first, as the RLDS pipeline
    crops = [dm.train_dataset[(3, e)]["image"] for e in range(4)]
    assert all(c.shape == plain.shape for c in crops) and any(not np.array_equal(c, plain) for c in crops)


def test_statistics_cached_next_to_the_data(libero_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = _datamodule(libero_root)
    stats = json.loads((libero_root / "vlm4vla_stats.json").read_text())
    entry = stats["entries"][dm.stats_key()]
    # the cache holds the statistics; the ±0.65 second stage is the datamodule's option on top
    assert entry["normalizer"] == dm.normalizer.with_action_clip(None).to_dict() and entry["num_episodes"] == 4
    assert dm.normalizer.action_clip == 0.65

    def fail(*args, **kwargs):
        raise AssertionError("statistics recomputed although cached")

    monkeypatch.setattr(QuantileNormalizer, "from_actions", fail)
    fresh = LiberoDataModule(libero_root, val_fraction=0.34, num_workers=0)
    assert fresh.normalizer == dm.normalizer  # before setup, from the cache
    assert fresh.state_dict()["normalizer"] == dm.normalizer.to_dict()


def test_read_only_data_falls_back_to_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_libero_hdf5(tmp_path / "ro", num_tasks=1, demos_per_task=2, steps=6)
    writable = cache._writable_dir
    monkeypatch.setattr(cache, "_writable_dir", lambda p: p.resolve() != root.resolve() and writable(p))
    monkeypatch.setenv("VLM4VLA_CACHE_DIR", str(tmp_path / "user"))
    dm = _datamodule(root, val_fraction=0.0)
    assert not (root / "vlm4vla_stats.json").exists()
    assert list((tmp_path / "user").glob("ro-*/vlm4vla_stats.json"))
    assert _datamodule(root, val_fraction=0.0).normalizer == dm.normalizer


def test_stats_function_and_command(libero_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reader_stats = compute_stats(LiberoHDF5Reader(libero_root))
    assert reader_stats.stats["count"] == 3 * 20 + 3 + 3 * 21  # all episodes: 20 + 21 + 22 per task
    out = tmp_path / "norm.json"
    assert stats_main(["libero", str(libero_root), "--val-fraction", "0.34", "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) == _datamodule(libero_root).normalizer.to_dict()
    assert stats_main(["libero", str(tmp_path / "missing")]) == 2
    assert "missing: dataset directory not found" in capsys.readouterr().err


def test_checkpoint_state_restores_normalizer(libero_root: Path) -> None:
    dm = _datamodule(libero_root)
    state = json.loads(json.dumps(dm.state_dict()))
    other = _datamodule(libero_root, split_seed=3)
    assert other.normalizer != dm.normalizer
    other.load_state_dict(state)
    assert other.normalizer == dm.normalizer
    sample = other.train_dataset[0]
    ep = sample["episode_index"]
    raw = LiberoHDF5Reader(libero_root).actions(ep)[:N]
    np.testing.assert_allclose(
        sample["actions"][:, :6].numpy(), dm.normalizer.normalize(raw)[:, :6], atol=1e-6
    )


def test_float32_actions_and_single_file_root(tmp_path: Path) -> None:
    root = write_libero_hdf5(
        tmp_path / "f32", num_tasks=1, demos_per_task=2, steps=6, action_dtype=np.float32
    )
    dm = _datamodule(root / libero_task_file(0), val_fraction=0.0)
    assert len(dm.train_dataset) == 6 + 7


def test_explicit_format_option(libero_root: Path) -> None:
    assert _datamodule(libero_root, format="hdf5").resolved_format == "hdf5"
    with pytest.raises(ValueError, match="format must be one of"):
        LiberoDataModule(libero_root, format="parquet")


# -- bad input ------------------------------------------------------------------------------------
@pytest.fixture
def small_libero(tmp_path: Path) -> Path:
    return write_libero_hdf5(tmp_path / "libero", num_tasks=1, demos_per_task=3, steps=8)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match=r"nope: dataset directory not found"):
        _datamodule(tmp_path / "nope")


def test_folder_without_data(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match=r"empty: no dataset found \(looked for \*\.hdf5"):
        _datamodule(tmp_path / "empty")


def test_truncated_hdf5(small_libero: Path) -> None:
    path = small_libero / libero_task_file(0)
    truncate_file(path, 0.6)
    with pytest.raises(DatasetFormatError, match=rf"{path.name}: cannot open HDF5 file: .*truncated"):
        _datamodule(small_libero)


def test_missing_actions_field(small_libero: Path) -> None:
    path = small_libero / libero_task_file(0)
    replace_dataset(path, "data/demo_1/actions", None)
    with pytest.raises(DatasetFormatError, match=rf"{path.name}: missing field 'data/demo_1/actions'"):
        _datamodule(small_libero)


def test_missing_instruction(small_libero: Path) -> None:
    path = small_libero / libero_task_file(0)
    with h5py.File(path, "r+") as f:
        del f["data"].attrs["problem_info"]
    with pytest.raises(DatasetFormatError, match=rf"{path.name}: missing field 'data.attrs\[problem_info\]'"):
        _datamodule(small_libero)


def test_wrong_action_dimension(small_libero: Path) -> None:
    path = small_libero / libero_task_file(0)
    replace_dataset(path, "data/demo_2/actions", np.zeros((10, 6)))
    with pytest.raises(
        DatasetFormatError, match=rf"{path.name}: field 'data/demo_2/actions' has shape \(10, 6\)"
    ):
        _datamodule(small_libero)


def test_nan_episode_skipped_with_count(small_libero: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = small_libero / libero_task_file(0)
    with h5py.File(path, "r+") as f:
        f["data/demo_1/actions"][3, 2] = np.nan
    with caplog.at_level(logging.WARNING, logger="vlm4vla.data.datamodule"):
        dm = _datamodule(small_libero, val_fraction=0.0)
    assert "skipped 1 episode(s) with NaN/inf actions" in caplog.text and "data/demo_1" in caplog.text
    assert dm.train_dataset.episodes.tolist() == [0, 2]
    assert np.isfinite(dm.normalizer.low).all()


def test_nan_episode_error_on_request(small_libero: Path) -> None:
    path = small_libero / libero_task_file(0)
    with h5py.File(path, "r+") as f:
        f["data/demo_1/actions"][3, 2] = np.nan
    with pytest.raises(
        DatasetFormatError,
        match=rf"{path.name}:data/demo_1: field 'actions' has a non-finite value at step 3",
    ):
        _datamodule(small_libero, nan_policy="error")


def test_truncated_image_read_names_field(small_libero: Path) -> None:
    dm = _datamodule(small_libero, val_fraction=0.0, image_augmentation=False)
    truncate_file(small_libero / libero_task_file(0), 0.6)
    with pytest.raises(DatasetFormatError, match=rf"{libero_task_file(0)}: cannot open HDF5 file"):
        dm.train_dataset[0]


def test_explicit_cache_dir_not_writable_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 10, item 20: an explicit cache_dir is never silently replaced by the user cache.
    root = write_libero_hdf5(tmp_path / "data", num_tasks=1, demos_per_task=2, steps=6)
    monkeypatch.setenv("VLM4VLA_CACHE_DIR", str(tmp_path / "user"))
    locked = tmp_path / "locked"
    locked.mkdir()
    writable = cache._writable_dir
    monkeypatch.setattr(cache, "_writable_dir", lambda p: p.resolve() != locked.resolve() and writable(p))
    with pytest.raises(DatasetFormatError, match=rf"^{locked}: cache directory \(cache_dir / --cache-dir\) is not writable$"):
        _datamodule(root, val_fraction=0.0, cache_dir=locked)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DatasetFormatError, match=r"a_file/cache: cache directory .* cannot be created"):
        _datamodule(root, val_fraction=0.0, cache_dir=tmp_path / "a_file" / "cache")
    assert not (tmp_path / "user").exists() and not (root / "vlm4vla_stats.json").exists()
    assert stats_main(["libero", str(root), "--cache-dir", str(locked)]) == 2
    dm = _datamodule(root, val_fraction=0.0, cache_dir=tmp_path / "new" / "cache")  # created when missing
    assert (tmp_path / "new" / "cache" / "vlm4vla_stats.json").is_file() and dm.normalizer is not None

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.calvin import rewrite_npz_field, truncate_file, write_calvin_split
from vlm4vla.data.calvin import CalvinDataModule, load_window_actions
from vlm4vla.data.formats.base import DatasetFormatError
from vlm4vla.data.formats.npz_calvin import CalvinReader
from vlm4vla.data.synthetic import decode_identity, has_marker_top_left
from vlm4vla.imaging import resize_image

N = 10


def _datamodule(root: Path, **kwargs) -> CalvinDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 4)
    dm = CalvinDataModule(root, chunk_size=N, **kwargs)
    dm.setup("fit")
    return dm


def _expected_chunk(reader: CalvinReader, frame: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Straight from the npz files: rel_actions of frame..frame+N-1, clipped at ±0.65, /0.65,
    gripper -1/+1 → 0/1, repeated past ``end`` (the last usable frame)."""
    rows, mask = [], []
    for k in range(N):
        f = min(frame + k, end)
        with np.load(reader.frame_path(f)) as npz:
            rel = npz["rel_actions"].astype(np.float64)
        rows.append(np.concatenate([np.clip(rel[:6], -0.65, 0.65) / 0.65, [1.0 if rel[6] > 0 else 0.0]]))
        mask.append(frame + k <= end)
    return np.asarray(rows, np.float32), np.asarray(mask)


def test_fixture_is_faithful(calvin_root: Path) -> None:
    first = calvin_root / "training" / "episode_0053819.npz"
    with np.load(first) as npz:
        fields = {k: (npz[k].shape, npz[k].dtype) for k in npz.files}
    assert fields["rgb_static"] == ((200, 200, 3), np.uint8)
    assert fields["rgb_gripper"] == ((84, 84, 3), np.uint8)
    assert fields["rgb_tactile"] == ((160, 120, 6), np.uint8)
    assert fields["depth_static"] == ((200, 200), np.float32)
    assert fields["rel_actions"] == ((7,), np.float64) and fields["actions"] == ((7,), np.float64)
    assert fields["robot_obs"][0] == (15,) and fields["scene_obs"][0] == (24,)
    assert not (calvin_root / "training" / "episode_0000000.npz").exists()
    ann = np.load(calvin_root / "training/lang_annotations/auto_lang_ann.npy", allow_pickle=True).item()
    assert ann["language"]["emb"].shape[1:] == (1, 384) and len(ann["info"]["indx"]) == 6


@pytest.mark.parametrize(("window_end", "usable"), [("exclusive", 15), ("inclusive", 16)])
def test_sample_shapes_dtypes_and_contents(calvin_root: Path, window_end: str, usable: int) -> None:
    # 16-frame windows: released (exclusive) samples frames start..end-1, inclusive all 16
    dm = _datamodule(calvin_root, image_augmentation=False, window_end=window_end)
    ds, reader = dm.train_dataset, dm.reader("train")
    assert len(ds) == 6 * usable
    for index in (0, 7, usable - 1, usable, 50, len(ds) - 1):
        sample = ds[index]
        assert sample["image"].dtype == np.uint8 and sample["image"].shape == (200, 200, 3)
        assert sample["actions"].dtype == torch.float32 and sample["actions"].shape == (N, 7)
        assert sample["action_mask"].dtype == torch.bool and sample["action_mask"].shape == (N,)
        window, frame = sample["episode_index"], sample["frame_index"]
        start, end = reader.windows[window]
        last = int(end) - (window_end == "exclusive")
        assert start <= frame <= last
        assert sample["instruction"] == reader.instructions[window]
        actions, mask = _expected_chunk(reader, frame, last)
        np.testing.assert_allclose(sample["actions"].numpy(), actions, atol=1e-6)
        np.testing.assert_array_equal(sample["action_mask"].numpy(), mask)
        with np.load(reader.frame_path(frame)) as npz:
            np.testing.assert_array_equal(sample["image"], npz["rgb_static"])
        assert has_marker_top_left(sample["image"])  # CALVIN images are stored upright
        assert (
            decode_identity(sample["image"])[1]
            == frame - reader.episodes[reader.episodes[:, 0] <= frame][-1, 0]
        )


@pytest.mark.parametrize(("window_end", "last_of_first_window"), [("exclusive", 14), ("inclusive", 15)])
def test_mask_and_padding_at_window_end(calvin_root: Path, window_end: str, last_of_first_window: int) -> None:
    dm = _datamodule(calvin_root, image_augmentation=False, window_end=window_end)
    ds = dm.train_dataset
    sample = ds[last_of_first_window]
    assert sample["frame_index"] == dm.reader("train").windows[0, 0] + last_of_first_window
    assert sample["action_mask"].tolist() == [True] + [False] * (N - 1)
    assert torch.equal(sample["actions"][1:], sample["actions"][:1].expand(N - 1, 7))
    assert ds[last_of_first_window + 1]["episode_index"] == 1  # the next window starts
    three_left = ds[last_of_first_window - 2]
    assert three_left["action_mask"].tolist() == [True] * 3 + [False] * (N - 3)
    assert torch.equal(three_left["actions"][3:], three_left["actions"][2:3].expand(N - 3, 7))
    assert ds[0]["action_mask"].all()


def test_gripper_and_arm_ranges(calvin_root: Path) -> None:
    dm = _datamodule(calvin_root, image_augmentation=False)
    actions = torch.cat([dm.train_dataset[i]["actions"] for i in range(len(dm.train_dataset))])
    assert set(actions[:, 6].tolist()) == {0.0, 1.0}
    assert actions[:, :6].abs().max() <= 1.0
    assert (actions[:, :6].abs() == 1.0).any()  # the fixture has |rel_actions| > 0.65: clipped


def test_validation_folder_and_no_augmentation_at_validation(calvin_root: Path) -> None:
    dm = _datamodule(calvin_root, image_augmentation=True)
    val = dm.val_dataset
    assert val is not None and len(val) == 3 * 15  # released window end: 15 of 16 frames
    assert val.reader.root == calvin_root / "validation" and val.transform is None
    sample = val[5]
    with np.load(val.reader.frame_path(sample["frame_index"])) as npz:
        np.testing.assert_array_equal(sample["image"], npz["rgb_static"])
    assert sample["frame_index"] >= 611_042


def test_train_augmentation_seeded_by_seed_epoch_index(calvin_root: Path) -> None:
    dm = _datamodule(calvin_root, image_augmentation=True, seed=1)
    ds = dm.train_dataset
    # the augmentation resizes to 224² (bicubic) before the shift, as released
    raw = resize_image(CalvinReader(calvin_root / "training").frame(ds[3]["frame_index"]), 224)
    a, b = ds[(3, 0)]["image"], ds[(3, 0)]["image"]
    assert a.shape == raw.shape
    np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(ds[(3, e)]["image"], raw) for e in range(5))
    assert any(not np.array_equal(a, ds[(3, e)]["image"]) for e in range(1, 6))
    assert torch.equal(ds[(3, 0)]["actions"], ds[(3, 4)]["actions"])  # only the image is augmented


def test_order_is_deterministic_and_independent_of_workers(calvin_root: Path) -> None:
    def batches(seed: int, workers: int) -> list[dict]:
        dm = _datamodule(calvin_root, seed=seed, num_workers=workers, batch_size=8)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        return [b for _, b in zip(range(3), loader, strict=False)]

    ref = batches(0, 0)
    for other in (batches(0, 0), batches(0, 2)):
        for x, y in zip(ref, other, strict=True):
            assert torch.equal(x["images"], y["images"]) and torch.equal(x["actions"], y["actions"])
            assert x["instructions"] == y["instructions"]
    different = batches(1, 0)
    assert not all(torch.equal(x["actions"], y["actions"]) for x, y in zip(ref, different, strict=True))


def test_action_cache_is_reused(calvin_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _datamodule(calvin_root)
    assert list((calvin_root / "training" / "vlm4vla_cache").glob("calvin-training-*.npz"))

    def fail(*args, **kwargs):
        raise AssertionError("rel_actions re-read although cached")

    monkeypatch.setattr(CalvinReader, "read_rel_actions", fail)
    dm = _datamodule(calvin_root)
    assert len(dm.train_dataset) == 6 * 15


def test_normalizer_before_setup_and_in_state_dict(calvin_root: Path) -> None:
    dm = CalvinDataModule(calvin_root, num_workers=0)
    state = dm.state_dict()
    assert state["normalizer"]["type"] == "range" and state["normalizer"]["high"] == [0.65] * 6
    assert state["normalizer"]["gripper"]["kind"] == "signed"


# -- bad input ------------------------------------------------------------------------------------
@pytest.fixture
def small_calvin(tmp_path: Path) -> Path:
    root = tmp_path / "calvin"
    write_calvin_split(
        root / "training",
        start_index=1000,
        num_episodes=1,
        episode_length=20,
        window_length=8,
        windows_per_episode=2,
    )
    write_calvin_split(
        root / "validation",
        start_index=5000,
        num_episodes=1,
        episode_length=10,
        window_length=8,
        windows_per_episode=1,
        validation=True,
    )
    return root


def _window_frame(root: Path) -> Path:
    reader = CalvinReader(root / "training")
    return reader.frame_path(int(reader.windows[0, 0]) + 2)


def test_missing_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match=r"nope: CALVIN dataset directory not found"):
        _datamodule(tmp_path / "nope")


def test_missing_split_folder(small_calvin: Path) -> None:
    shutil.rmtree(small_calvin / "validation")
    with pytest.raises(DatasetFormatError, match=r"validation: CALVIN split directory not found"):
        _datamodule(small_calvin)
    assert len(_datamodule(small_calvin, val_split=None).train_dataset) == 2 * 7


def test_missing_annotation_file(small_calvin: Path) -> None:
    (small_calvin / "training/lang_annotations/auto_lang_ann.npy").unlink()
    with pytest.raises(DatasetFormatError, match=r"auto_lang_ann\.npy: language annotation file not found"):
        _datamodule(small_calvin)


def test_truncated_npz_found_when_indexing(small_calvin: Path) -> None:
    path = _window_frame(small_calvin)
    truncate_file(path, 0.5)
    with pytest.raises(DatasetFormatError, match=rf"{path.name}: cannot read field 'rel_actions'"):
        _datamodule(small_calvin)


def test_truncated_npz_found_when_loading_image(small_calvin: Path) -> None:
    dm = _datamodule(small_calvin, image_augmentation=False)
    path = _window_frame(small_calvin)
    truncate_file(path, 0.3)
    with pytest.raises(DatasetFormatError, match=rf"{path.name}: cannot read field 'rgb_static'") as err:
        dm.train_dataset[2]
    assert "\n" not in str(err.value)


def test_missing_frame_file(small_calvin: Path) -> None:
    path = _window_frame(small_calvin)
    path.unlink()
    with pytest.raises(
        DatasetFormatError, match=rf"{path.name}: frame file not found \(needed for field 'rel_actions'\)"
    ):
        _datamodule(small_calvin)


def test_wrong_action_dimension(small_calvin: Path) -> None:
    path = _window_frame(small_calvin)
    rewrite_npz_field(path, "rel_actions", np.zeros(6))
    with pytest.raises(
        DatasetFormatError, match=rf"{path.name}: field 'rel_actions' has float64 shape \(6,\)"
    ):
        _datamodule(small_calvin)


def test_nan_window_is_skipped_and_counted(small_calvin: Path, caplog: pytest.LogCaptureFixture) -> None:
    reader = CalvinReader(small_calvin / "training")
    path = _window_frame(small_calvin)
    nan = np.full(7, np.nan)
    rewrite_npz_field(path, "rel_actions", nan)
    frame = int(path.stem.split("_")[1])
    hit = [w for w, (s, e) in enumerate(reader.windows) if s <= frame <= e]
    with caplog.at_level(logging.WARNING, logger="vlm4vla.data.calvin"):
        dm = _datamodule(small_calvin)
    assert f"skipped {len(hit)} language window(s) with NaN/inf rel_actions" in caplog.text
    assert len(dm.train_dataset) == 7 * (2 - len(hit))
    assert all(
        np.isfinite(dm.train_dataset[i]["actions"].numpy()).all() for i in range(len(dm.train_dataset))
    )


def test_nan_is_an_error_on_request(small_calvin: Path) -> None:
    path = _window_frame(small_calvin)
    rewrite_npz_field(path, "rel_actions", np.full(7, np.nan))
    with pytest.raises(DatasetFormatError, match=rf"{path.name}: field 'rel_actions' has a non-finite value"):
        _datamodule(small_calvin, nan_policy="error")


def test_annotation_window_outside_recorded_episodes(small_calvin: Path) -> None:
    path = small_calvin / "training/lang_annotations/auto_lang_ann.npy"
    ann = np.load(path, allow_pickle=True).item()
    ann["info"]["indx"][0] = (10, 20)
    np.save(path, ann, allow_pickle=True)
    with pytest.raises(
        DatasetFormatError, match=r"auto_lang_ann\.npy: field 'info/indx' window 0 \[10, 20\] is not inside"
    ):
        _datamodule(small_calvin)


def test_calvin_action_cache_keyed_on_frame_files(small_calvin: Path) -> None:
    # Issue 10, item 19: the cache key covers the frame files (count, total size, newest mtime).
    _datamodule(small_calvin)
    split = small_calvin / "training"
    assert len(list((split / "vlm4vla_cache").glob("calvin-training-*.npz"))) == 1
    path = _window_frame(small_calvin)
    frame = int(path.stem.split("_")[1])
    edited = np.array([0.25, -0.5, 0.125, 0.0, 0.75, -0.25, 1.0])  # hand-chosen, exact in float32
    rewrite_npz_field(path, "rel_actions", edited)  # edited in place: newer mtime
    arrays = load_window_actions(CalvinReader(split))
    row = int(np.searchsorted(arrays["frames"], frame))
    assert arrays["frames"][row] == frame
    np.testing.assert_array_equal(arrays["rel_actions"][row], edited.astype(np.float32))
    dm = _datamodule(small_calvin, image_augmentation=False)  # the datamodule sees the edit too
    ds = dm.train_dataset
    windows = dm.reader("train").windows
    segment = next(i for i, w in enumerate(ds.windows) if windows[w, 0] <= frame <= windows[w, 1])
    sample = ds[int(ds._starts[segment]) + frame - int(windows[ds.windows[segment], 0])]
    assert sample["frame_index"] == frame
    np.testing.assert_allclose(sample["actions"][0, :6].numpy(), np.clip(edited[:6], -0.65, 0.65) / 0.65, atol=1e-6)


def test_calvin_frame_summary_is_stats_only(small_calvin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlm4vla.data import cache

    split = small_calvin / "training"
    frames = sorted(split.glob("episode_*.npz"))
    stats = [p.stat() for p in frames]
    expected = f"{len(frames)}|{sum(s.st_size for s in stats)}|{max(s.st_mtime_ns for s in stats)}"
    monkeypatch.setattr(np, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("frame read")))
    assert cache.directory_summary(split, ".npz") == expected


@pytest.mark.parametrize(
    ("window_end", "samples", "first_mask", "masks_end"),
    [
        # 8-frame window [s, s+7], N = 10. Released: t = s..s+6 (7 samples); at t = s the steps
        # s..s+6 are valid (7), s+7 = end is masked. Inclusive: 8 samples, 8 valid steps.
        ("exclusive", 7, [True] * 7 + [False] * 3, True),
        ("inclusive", 8, [True] * 8 + [False] * 2, False),
    ],
)
def test_window_end_sample_counts_and_masks(
    small_calvin: Path, window_end: str, samples: int, first_mask: list, masks_end: bool
) -> None:
    dm = _datamodule(small_calvin, image_augmentation=False, window_end=window_end)
    ds, reader = dm.train_dataset, dm.reader("train")
    assert len(ds) == 2 * samples and ds.lengths.tolist() == [samples, samples]
    start, end = (int(v) for v in reader.windows[0])
    assert end - start == 7
    first = ds[0]
    assert first["frame_index"] == start and first["action_mask"].tolist() == first_mask
    frames = [ds[i]["frame_index"] for i in range(samples)]
    assert frames == list(range(start, start + samples))
    # the step that would show the action at ``end`` (step 7 of the first sample)
    assert bool(first["action_mask"][7]) is not masks_end
    last = ds[samples - 1]
    assert last["action_mask"].tolist() == [True] + [False] * (N - 1)
    assert last["frame_index"] == (end - 1 if masks_end else end)


def test_window_end_is_checked_and_recorded(small_calvin: Path) -> None:
    with pytest.raises(ValueError, match="window_end must be one of"):
        CalvinDataModule(small_calvin, window_end="closed")
    assert CalvinDataModule(small_calvin, num_workers=0).state_dict()["data_options"] == {"window_end": "exclusive"}

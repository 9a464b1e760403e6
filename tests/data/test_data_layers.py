"""The pieces the datamodules are built from: the format registry (a new format is one class),
the fork-safe handle cache, the episode index and TFRecord framing."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.rlds import tfrecord_frame
from vlm4vla.data.datamodule import EpisodeDataModule
from vlm4vla.data.episodes import EpisodeIndex, build_episode_index, holdout_split, segment_offsets
from vlm4vla.data.formats import tfrecord
from vlm4vla.data.formats.base import DatasetFormatError
from vlm4vla.data.formats.detect import detect_format, open_episode_reader
from vlm4vla.data.formats.handles import HandleCache
from vlm4vla.data.formats.registry import FORMATS, EpisodeFormat, episode_formats, get_format, register_format


# -- registry -----------------------------------------------------------------------------------
class _NpzReader:
    """Episodes of ``<root>/<split>.npz`` (``lengths``, ``actions``, ``frames``, ``instructions``)."""

    def __init__(self, root: Path, split: str) -> None:
        self.root = root
        with np.load(root / f"{split}.npz") as data:
            self.data = {k: data[k] for k in data.files}
        self.offsets = segment_offsets(self.data["lengths"])

    def __len__(self) -> int:
        return len(self.data["lengths"])

    def episode_length(self, episode: int) -> int:
        return int(self.data["lengths"][episode])

    def instruction(self, episode: int) -> str:
        return str(self.data["instructions"][episode])

    def actions(self, episode: int) -> np.ndarray:
        return self.data["actions"][self.offsets[episode] : self.offsets[episode + 1]]

    def frame(self, episode: int, step: int) -> np.ndarray:
        return self.data["frames"][self.offsets[episode] + step]


def _write_npz_split(root: Path, split: str, lengths: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    total = sum(lengths)
    np.savez(
        root / f"{split}.npz",
        lengths=np.asarray(lengths),
        actions=rng.uniform(-1, 1, (total, 7)).astype(np.float32),
        frames=rng.integers(0, 255, (total, 8, 8, 3), dtype=np.uint8),
        instructions=np.asarray([f"{split} task {i}" for i in range(len(lengths))]),
    )


@pytest.fixture
def npz_format(monkeypatch):
    """A toy format registered for one test (the registry is restored afterwards)."""
    episode_formats()  # load the built-in formats first, so the restore keeps them
    monkeypatch.setattr(FORMATS, "_items", dict(FORMATS._items))

    @register_format("toy-npz")
    class NpzFormat(EpisodeFormat):
        looks_for = "train.npz"

        def detect(self, root: Path) -> bool:
            return (root / "train.npz").is_file()

        def open(self, root, *, split="train", image_key=None, action_key=None, instruction_key=None):
            return _NpzReader(root, split)

        def has_split(self, root: Path, split: str) -> bool:
            return (root / f"{split}.npz").is_file()

    return NpzFormat


def test_a_new_format_is_one_registered_class(npz_format, tmp_path: Path) -> None:
    _write_npz_split(tmp_path, "train", [5, 3, 4], seed=0)
    _write_npz_split(tmp_path, "val", [2, 6], seed=1)
    assert "toy-npz" in episode_formats() and get_format("toy-npz").name == "toy-npz"
    assert detect_format(tmp_path) == "toy-npz"
    assert len(open_episode_reader("toy-npz", tmp_path, split="val")) == 2
    with pytest.raises(ValueError, match=r"instruction_key='text' applies to the rlds format only"):
        open_episode_reader("toy-npz", tmp_path, instruction_key="text")

    class ToyDataModule(EpisodeDataModule):
        dataset_name = "toy"

    dm = ToyDataModule(tmp_path, chunk_size=2, num_workers=0, batch_size=2, image_augmentation=False)
    dm.setup("fit")
    # The format's own val split replaces the holdout, as RLDS's does; its name keys the stats.
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (12, 8)
    assert "/toy-npz-train-val/" in dm.stats_key()
    sample = dm.val_dataset[7]
    assert (sample["episode_index"], sample["frame_index"], sample["instruction"]) == (1, 5, "val task 1")


def test_registry_rejects_non_formats_and_names_known_ones() -> None:
    with pytest.raises(TypeError, match="must decorate an EpisodeFormat subclass"):
        register_format("bogus")(object)
    with pytest.raises(ValueError, match=r"unknown dataset format 'lerobt' \(did you mean 'lerobot'\?\)"):
        get_format("lerobt")
    assert {"hdf5", "lerobot", "rlds"} <= set(episode_formats())


def test_detect_lists_what_each_allowed_format_looks_for(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match=r"looked for \*\.hdf5, meta/info\.json, features\.json"):
        detect_format(tmp_path, ("hdf5", "lerobot", "rlds"))


# -- handle cache -------------------------------------------------------------------------------
class _Handle:
    def __init__(self, key: str, closed: list[str]) -> None:
        self.key, self._closed = key, closed

    def close(self) -> None:
        self._closed.append(self.key)


def test_handle_cache_evicts_least_recently_used_and_closes_it() -> None:
    closed: list[str] = []
    cache: HandleCache[str, _Handle] = HandleCache(max_open=2)
    opened = {k: cache.get(k, lambda k: _Handle(k, closed)) for k in ("a", "b")}
    assert cache.get("a", lambda k: pytest.fail("reopened")) is opened["a"]  # a is now the most recent
    cache.get("c", lambda k: _Handle(k, closed))
    assert closed == ["b"] and len(cache) == 2
    cache.close()
    assert sorted(closed) == ["a", "b", "c"] and len(cache) == 0


def test_handle_cache_reopens_after_fork_without_touching_the_parents(monkeypatch) -> None:
    closed: list[str] = []
    cache: HandleCache[str, _Handle] = HandleCache()
    parent = cache.get("a", lambda k: _Handle(k, closed))
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as seen from a forked child
    child = cache.get("a", lambda k: _Handle(k, closed))
    assert child is not parent and closed == []
    cache.close()
    assert closed == ["a"]  # the child's handle, once


def test_handle_cache_pickles_without_handles() -> None:
    cache: HandleCache[int, int] = HandleCache(max_open=3, close=os.close)
    fd = cache.get(0, lambda _: os.open(os.devnull, os.O_RDONLY))
    clone = pickle.loads(pickle.dumps(cache))
    assert len(clone) == 0 and clone.max_open == 3
    cache.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the cache


# -- episode index ------------------------------------------------------------------------------
def test_episode_index_offsets_take_and_round_trip(tmp_path: Path) -> None:
    _write_npz_split(tmp_path, "train", [5, 0, 3, 4], seed=0)
    reader = _NpzReader(tmp_path, "train")
    index = build_episode_index(reader)
    assert index.offsets.tolist() == [0, 5, 5, 8, 12] and index.offsets.dtype == np.int64
    np.testing.assert_array_equal(index.episode_actions(2), reader.actions(2))
    subset = index.take([3, 0])
    assert subset.lengths.tolist() == [4, 5] and subset.instructions.tolist() == ["train task 3", "train task 0"]
    np.testing.assert_array_equal(subset.actions, np.concatenate([reader.actions(3), reader.actions(0)]))
    assert subset.offsets[:-1].tolist() == [0, 4]
    empty = index.take([])
    assert empty.actions.shape == (0, 7) and empty.offsets.tolist() == [0]
    again = EpisodeIndex.from_arrays(dict(np.load(_saved(tmp_path, index))))
    for name in EpisodeIndex.FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(index, name))


def _saved(tmp_path: Path, index: EpisodeIndex) -> Path:
    path = tmp_path / "index.npz"
    np.savez(path, **index.to_arrays())
    return path


@pytest.mark.parametrize(("count", "fraction"), [(1, 0.05), (2, 0.05), (20, 0.05), (20, 0.0), (7, 0.5)])
def test_holdout_split(count: int, fraction: float) -> None:
    train, val = holdout_split(count, fraction, seed=3)
    assert sorted(train.tolist() + val.tolist()) == list(range(count))
    expected = 0 if fraction == 0 or count == 1 else min(max(round(count * fraction), 1), count - 1)
    assert len(val) == expected
    again = holdout_split(count, fraction, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)


# -- TFRecord framing ---------------------------------------------------------------------------
def test_tfrecord_scan_and_read_records_written_by_the_fixture(tmp_path: Path) -> None:
    payloads = [b"first", b"", b"x" * 1000]
    blob = b"".join(tfrecord_frame(p) for p in payloads)
    path = tmp_path / "shard.tfrecord"

    def read(size: int, offset: int) -> bytes:
        return blob[offset : offset + size]

    records = tfrecord.scan_records(read, len(blob), path)
    assert [length for _, length in records] == [len(p) for p in payloads]
    assert [tfrecord.read_record(read, o, n, path) for o, n in records] == payloads
    with pytest.raises(DatasetFormatError, match=r"shard\.tfrecord: record at offset \d+ is truncated"):
        tfrecord.scan_records(read, len(blob) - 1, path)
    broken = bytearray(blob)
    broken[records[2][0] + 12] ^= 0xFF
    with pytest.raises(DatasetFormatError, match="payload CRC32C mismatch"):
        tfrecord.read_record(lambda n, o: bytes(broken[o : o + n]), *records[2], path)
    with pytest.raises(DatasetFormatError, match=r"^where is not a tf\.train\.Example"):
        tfrecord.parse_example(b"\xff\xff\xff", "where")

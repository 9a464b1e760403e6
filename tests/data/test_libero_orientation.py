"""LIBERO samples are upright, checked against an oracle that shares no code with the library.

LIBERO's HDF5 demos store ``obs/agentview_rgb`` upside down (rotated by 180°). The oracle here
reads the real LIBERO-written demo file of /work/shared/real-data with ``h5py`` and rotates each
frame with numpy indexing (``raw[::-1, ::-1]``), not with ``vlm4vla``'s rotate function; every
sample of ``LiberoDataModule`` (augmentation off), from the datasets and from the DataLoaders,
must be exactly one oracle frame, and together they must be every frame once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from vlm4vla.data.libero import LiberoDataModule

REAL_LIBERO_DIR = Path("/work/shared/real-data/libero_hdf5")
REAL_FILES = sorted(REAL_LIBERO_DIR.glob("*.hdf5")) if REAL_LIBERO_DIR.is_dir() else []

pytestmark = pytest.mark.skipif(not REAL_FILES, reason="real LIBERO demo file not present")


def _demo_number(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def _oracle() -> dict[bytes, tuple[str, str, int]]:
    """Upright frame bytes → (file, demo, step), straight from the real files with h5py."""
    frames: dict[bytes, tuple[str, str, int]] = {}
    for path in REAL_FILES:
        with h5py.File(path, "r") as f:
            for demo in sorted(f["data"], key=_demo_number):
                raw = f["data"][demo]["obs"]["agentview_rgb"][()]
                assert raw.dtype == np.uint8 and raw.ndim == 4 and raw.shape[-1] == 3
                for t, frame in enumerate(raw):
                    upright = np.ascontiguousarray(frame[::-1, ::-1])
                    # A wrong rotation must not pass for a right one: the frame is not symmetric.
                    assert not np.array_equal(upright, frame[::-1]) and not np.array_equal(upright, frame[:, ::-1])
                    assert not np.array_equal(upright, frame)
                    key = upright.tobytes()
                    assert key not in frames, f"{path.name} {demo} step {t} repeats {frames[key]}"
                    frames[key] = (path.name, demo, t)
    return frames


@pytest.fixture(scope="module")
def oracle() -> dict[bytes, tuple[str, str, int]]:
    return _oracle()


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> LiberoDataModule:
    root = tmp_path_factory.mktemp("real_libero") / "libero_10"
    root.mkdir()
    for path in REAL_FILES:  # the originals are read-only; statistics are cached next to the data
        shutil.copy(path, root / path.name)
    dm = LiberoDataModule(
        root, val_fraction=0.34, num_workers=0, image_augmentation=False, batch_size=4, chunk_size=4, seed=0
    )
    dm.setup("fit")
    return dm


def _lookup(oracle: dict[bytes, tuple[str, str, int]], image: np.ndarray, where: str) -> tuple[str, str, int]:
    image = np.asarray(image)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3, f"{where}: {image.dtype} {image.shape}"
    found = oracle.get(np.ascontiguousarray(image).tobytes())
    if found is None:
        for name, flip in (("rows only", lambda x: x[::-1]), ("columns only", lambda x: x[:, ::-1])):
            if np.ascontiguousarray(flip(image[::-1, ::-1])).tobytes() in oracle:
                raise AssertionError(f"{where}: the image is a stored frame flipped by {name}, not rotated 180°")
        if np.ascontiguousarray(image[::-1, ::-1]).tobytes() in oracle:
            raise AssertionError(f"{where}: the image is a stored frame as stored (upside down)")
        raise AssertionError(f"{where}: the image is none of the upright frames of the real file")
    return found


def test_every_dataset_sample_is_the_upright_raw_frame(datamodule: LiberoDataModule, oracle) -> None:
    seen: list[tuple[str, str, int]] = []
    for split in ("train", "val"):
        dataset = getattr(datamodule, f"{split}_dataset")
        assert len(dataset) > 0, f"the {split} split is empty"
        for i in range(len(dataset)):
            sample = dataset[i]
            found = _lookup(oracle, sample["image"], f"{split} sample {i}")
            assert sample.get("frame_index", found[2]) == found[2], f"{split} sample {i}: {found}"
            seen.append(found)
    assert sorted(seen) == sorted(oracle.values()), "samples must be every frame of the file exactly once"


@pytest.mark.parametrize("split", ["train", "val"])
def test_dataloader_batches_are_upright(datamodule: LiberoDataModule, oracle, split: str) -> None:
    loader = getattr(datamodule, f"{split}_dataloader")()
    seen = []
    for b, batch in enumerate(loader):
        images = batch["images"]
        assert isinstance(images, torch.Tensor) and images.dtype == torch.uint8
        seen += [_lookup(oracle, image.numpy(), f"{split} batch {b} image {k}") for k, image in enumerate(images)]
    assert len(seen) == len(set(seen)) == len(getattr(datamodule, f"{split}_dataset"))

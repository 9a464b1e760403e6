"""The datamodules apply the released training image pipelines (`vlm4vla.data.transforms`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vlm4vla.data.calvin import CalvinDataModule
from vlm4vla.data.formats.npz_calvin import CalvinReader
from vlm4vla.data.libero import LiberoDataModule
from vlm4vla.data.transforms import Compose, OpenVLAAugment, RandomShift, Resize, sample_rng
from vlm4vla.errors import ConfigError
from vlm4vla.imaging import libero_image_to_upright, resize_image


def test_calvin_trains_on_the_bicubic_224_shifted_image(calvin_root: Path) -> None:
    dm = CalvinDataModule(calvin_root, chunk_size=10, num_workers=0, batch_size=2)
    dm.setup("fit")
    transform = dm.train_dataset.transform
    assert isinstance(transform, Compose)
    resize, shift = transform.transforms
    assert isinstance(resize, Resize) and (resize.size, resize.resample) == (224, "bicubic")
    assert isinstance(shift, RandomShift) and (shift.pad, shift.min_offset) == (10, 1)
    assert dm.val_dataset.transform is None  # validation: the stored frame, resized by the backbone
    sample = dm.train_dataset[(4, 2)]
    raw = CalvinReader(calvin_root / "training").frame(sample["frame_index"])
    np.testing.assert_array_equal(sample["image"], RandomShift(10)(resize_image(raw, 224), sample_rng(0, 2, 4)))


def test_libero_trains_on_the_openvla_pipeline(libero_root: Path) -> None:
    dm = LiberoDataModule(libero_root, chunk_size=4, num_workers=0, batch_size=2, seed=3)
    dm.setup("fit")
    resize, augment = dm.train_dataset.transform.transforms
    assert (resize.size, resize.resample) == (224, "lanczos")
    assert isinstance(augment, OpenVLAAugment)
    assert (augment.crop.scale, augment.crop.ratio) == ((0.9, 0.9), (1.0, 1.0))
    assert (augment.brightness, augment.contrast, augment.saturation, augment.hue) == (0.2, (0.8, 1.2), (0.8, 1.2), 0.05)
    sample = dm.train_dataset[(5, 1)]
    # the upright stored frame → Lanczos 224² → crop and colour jitter drawn from (seed, epoch, index)
    ds = dm.train_dataset
    raw = libero_image_to_upright(ds.reader.frame(sample["episode_index"], sample["frame_index"]))
    expected = augment(resize_image(raw, 224, "lanczos"), sample_rng(3, 1, 5))
    np.testing.assert_array_equal(sample["image"], expected)
    assert dm.val_dataset.transform is None


def test_the_augmentation_follows_the_models_image_size(calvin_root: Path) -> None:
    dm = CalvinDataModule(calvin_root, chunk_size=10, num_workers=0, image_size=512)
    dm.setup("fit")
    assert dm.train_dataset[(0, 0)]["image"].shape == (512, 512, 3)
    dm.set_inputs_fn(SimpleNamespace(image_size=512))  # the backbone's input processor
    with pytest.raises(ConfigError, match=r"image_size: the model takes 448² .*data.init_args.image_size: 448"):
        dm.set_inputs_fn(SimpleNamespace(image_size=448))
    off = CalvinDataModule(calvin_root, chunk_size=10, num_workers=0, image_augmentation=False)
    off.set_inputs_fn(SimpleNamespace(image_size=448))  # no resize in the data: the backbone's resize only

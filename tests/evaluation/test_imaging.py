"""`vlm4vla.imaging`: the image operations evaluation must apply exactly as training does."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlm4vla.imaging import (
    center_crop_resize,
    crop_and_resize,
    libero_image_to_upright,
    resize_image,
    rotate_180,
    to_unit_float,
    unit_float_to_uint8,
)


def _frame(h: int, w: int) -> np.ndarray:
    # No symmetry: a rotation differs from the raw image and from a single flip.
    return ((np.arange(h * w * 3).reshape(h, w, 3) * 31 + 7) % 251).astype(np.uint8)


def test_rotate_180_is_both_flips_and_contiguous() -> None:
    image = _frame(6, 5)
    upright = libero_image_to_upright(image)
    np.testing.assert_array_equal(upright, np.rot90(image, 2))
    np.testing.assert_array_equal(rotate_180(upright), image)
    assert upright.flags.c_contiguous and not np.array_equal(upright, image[::-1])


def test_resize_is_the_backbones_input_resize_and_bicubic() -> None:
    from vlm4vla.backbones.base import _to_pil_images  # what every training and evaluation image goes through

    frame = _frame(480, 640)
    expected = np.asarray(_to_pil_images([frame], 224)[0])
    resized = resize_image(frame, 224)
    np.testing.assert_array_equal(resized, expected)
    # the released backbones' torchvision T.Resize(BICUBIC) on a PIL image is PIL's bicubic resize
    np.testing.assert_array_equal(resized, np.asarray(Image.fromarray(frame).resize((224, 224), Image.Resampling.BICUBIC)))
    assert not np.array_equal(resized, np.asarray(Image.fromarray(frame).resize((224, 224), Image.Resampling.BILINEAR)))
    assert resized.dtype == np.uint8 and resized.flags.c_contiguous
    # already the target size: the same pixels, no resampling
    np.testing.assert_array_equal(resize_image(expected, 224), expected)
    # (height, width): non-square targets; the RLDS pipeline's Lanczos as an explicit filter
    part = np.ascontiguousarray(frame[::2, ::3])
    np.testing.assert_array_equal(
        resize_image(part, (48, 64), "lanczos"),
        np.asarray(Image.fromarray(part).resize((64, 48), Image.Resampling.LANCZOS)),
    )
    # a PIL image stays a PIL image
    pil = resize_image(Image.fromarray(frame), 224)
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), expected)
    with pytest.raises(ValueError, match="resample"):
        resize_image(frame, 224, "area")
    with pytest.raises(ValueError, match="uint8"):
        resize_image(frame.astype(np.float32), 224)


def test_unit_float_conversions_are_tensorflows() -> None:
    levels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(unit_float_to_uint8(to_unit_float(levels)), levels)  # k/255 → k
    # ×255.5 then truncation, after clipping: 0.5 → 127 (rounding would give 128), 1 → 255
    np.testing.assert_array_equal(
        unit_float_to_uint8(np.array([-0.2, 0.0, 0.5, 0.998, 1.0, 1.7], np.float32)), [0, 0, 127, 254, 255, 255]
    )


def test_crop_and_resize_samples_tensorflows_grid() -> None:
    # a linear image (value 3y + x): bilinear sampling reproduces the linear function exactly
    image = (3 * np.arange(3)[:, None] + np.arange(3)[None, :]).astype(np.float32)[..., None]
    whole = crop_and_resize(image, (0, 0, 1, 1), 5)[..., 0]
    # output i samples input y = i·(3−1)/(5−1) = i/2 (box corners on pixel centres)
    np.testing.assert_allclose(whole, 3 * (np.arange(5)[:, None] / 2) + np.arange(5)[None, :] / 2, atol=1e-6)
    # the lower-left quarter box: rows 1..2, columns 0..1
    np.testing.assert_allclose(crop_and_resize(image, (0.5, 0, 1, 0.5), 2)[..., 0], [[3, 4], [6, 7]], atol=1e-6)
    # x first, then y: a non-linear pattern, by hand — (0, 0.5) lies between 0 and 10 → 5
    checker = np.array([[0, 10], [20, 0]], np.float32)[..., None]
    np.testing.assert_allclose(crop_and_resize(checker, (0, 0, 0.5, 0.5), 2)[..., 0], [[0, 5], [10, 7.5]], atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        crop_and_resize(image, (0, 0, 1.5, 1), 2)


def test_center_crop_resize_is_the_released_libero_evaluation_crop() -> None:
    # a horizontal ramp, value = column (0..255) in a 256-wide image
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (256, 256, 3)).copy()
    out = center_crop_resize(ramp, 0.9, 224)
    side = np.sqrt(0.9)
    lo = (1 - side) / 2
    column = lo * 255 + np.arange(224) * side * 255 / 223  # sampled column = sampled value
    expected = np.floor(np.clip(column / 255, 0, 1) * 255.5).astype(np.uint8)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert np.abs(out[100, :, 0].astype(int) - expected.astype(int)).max() <= 1  # float32 vs float64 at the truncation
    assert (out[100, :, 0] == expected).mean() > 0.95
    np.testing.assert_array_equal(out[0], out[223])  # constant along y
    np.testing.assert_array_equal(center_crop_resize(np.full((256, 256, 3), 77, np.uint8), 0.9, 224), 77)

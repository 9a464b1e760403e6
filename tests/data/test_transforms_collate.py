from __future__ import annotations

import colorsys
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vlm4vla.data.collate import VLACollator
from vlm4vla.data.transforms import (
    Compose,
    OpenVLAAugment,
    RandomResizedCrop,
    RandomShift,
    Resize,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation_and_hue,
    calvin_image_transform,
    hsv_to_rgb,
    openvla_image_transform,
    rgb_to_hsv,
    sample_rng,
)
from vlm4vla.imaging import rotate_180


def _image(h: int = 64, w: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(h, w, 3), dtype=np.uint8)


class _FixedRng:
    """Stands in for a Generator whose draws are known: ``integers`` returns ``values``."""

    def __init__(self, *values: int) -> None:
        self.values = np.array(values)

    def integers(self, low: int, high: int, size: int) -> np.ndarray:
        assert np.all((low <= self.values) & (self.values < high))
        return self.values[:size]


def test_sample_rng_depends_only_on_seed_epoch_index() -> None:
    a = sample_rng(3, 1, 17).integers(0, 1 << 30, 4)
    np.testing.assert_array_equal(a, sample_rng(3, 1, 17).integers(0, 1 << 30, 4))
    assert not np.array_equal(a, sample_rng(3, 2, 17).integers(0, 1 << 30, 4))
    assert not np.array_equal(a, sample_rng(4, 1, 17).integers(0, 1 << 30, 4))


# -- CALVIN: RoboVLMs' RandomShiftsAug ------------------------------------------------------------
def test_random_shift_is_a_crop_of_the_replicate_padded_image() -> None:
    # a 4×4 ramp, value 10·row + column; pad 2 → the padded image is 8×8
    ramp = (10 * np.arange(4)[:, None] + np.arange(4)[None, :]).astype(np.uint8)
    image = np.repeat(ramp[..., None], 3, axis=2)
    shift = RandomShift(pad=2)
    # offsets (dy, dx) = (1, 4): rows 1..4 of the padded image = source rows [0, 0, 1, 2],
    # columns 4..7 = source columns [2, 3, 3, 3] (edge replicated)
    out = shift(image, _FixedRng(1, 4))
    expected = np.array([[2, 3, 3, 3], [2, 3, 3, 3], [12, 13, 13, 13], [22, 23, 23, 23]], np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out.shape == image.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    # offset (pad, pad) is the identity; (2·pad, 1): up by 2 rows, right by 1 column
    np.testing.assert_array_equal(shift(image, _FixedRng(2, 2)), image)
    np.testing.assert_array_equal(
        shift(image, _FixedRng(4, 1))[..., 0],
        [[20, 20, 21, 22], [30, 30, 31, 32], [30, 30, 31, 32], [30, 30, 31, 32]],
    )
    np.testing.assert_array_equal(RandomShift(0)(image, sample_rng(0, 0, 0)), image)


def test_random_shift_offsets_follow_the_released_forward_traj() -> None:
    # forward_traj draws randint(1, 2·pad + 1): offsets 1..20 for pad 10, never 0
    draws = {RandomShift(10).offsets(sample_rng(0, 0, i)) for i in range(3000)}
    assert {d for pair in draws for d in pair} == set(range(1, 21))
    draws = {RandomShift(10, min_offset=0).offsets(sample_rng(0, 0, i)) for i in range(3000)}
    assert {d for pair in draws for d in pair} == set(range(0, 21))
    image = _image(64, 64)
    a = RandomShift(4)(image, sample_rng(0, 0, 0))
    np.testing.assert_array_equal(a, RandomShift(4)(image, sample_rng(0, 0, 0)))
    dy, dx = RandomShift(4).offsets(sample_rng(0, 0, 0))
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="edge")
    np.testing.assert_array_equal(a, padded[dy : dy + 64, dx : dx + 64])
    with pytest.raises(ValueError):
        RandomShift(2, min_offset=5)


def test_calvin_pipeline_resizes_bicubic_then_shifts() -> None:
    image = _image(200, 200)
    transform = calvin_image_transform(augment=True)
    assert isinstance(transform, Compose)
    out = transform(image, sample_rng(0, 1, 5))
    resized = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, RandomShift(10)(resized, sample_rng(0, 1, 5)))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(calvin_image_transform(augment=False)(image, sample_rng(0, 1, 5)), resized)


# -- Bridge / LIBERO: OpenVLA's (dlimp's) augmentation -----------------------------------------------
def test_random_resized_crop_box_slides_along_the_diagonal() -> None:
    crop = RandomResizedCrop(0.9)
    side = np.sqrt(0.9)
    # dlimp draws scale, ratio and both offsets from one stateless seed: y1 = x1 = u·(1 − side)
    np.testing.assert_allclose(crop.box(0.0), (0, 0, side, side))
    np.testing.assert_allclose(crop.box(0.5), (0.5 * (1 - side),) * 2 + (0.5 * (1 - side) + side,) * 2)
    np.testing.assert_allclose(RandomResizedCrop(0.5, 2.0).box(0.0), (0, 0, 0.5, 1.0))  # sqrt(s/r) × sqrt(s·r)
    with pytest.raises(ValueError):
        RandomResizedCrop(1.5)


def test_random_resized_crop_samples_the_box_bilinearly() -> None:
    # a linear image (value y + 2x on 0..255 scale): bilinear sampling keeps it linear
    y, x = np.mgrid[0:64, 0:64]
    image = np.repeat((y + 2 * x).astype(np.uint8)[..., None], 3, axis=2)
    crop = RandomResizedCrop(0.9)
    u = float(sample_rng(0, 0, 3).random())
    out = crop(image, sample_rng(0, 0, 3))
    y1, x1, y2, x2 = crop.box(u)
    rows = y1 * 63 + np.arange(64) * (y2 - y1) * 63 / 63
    cols = x1 * 63 + np.arange(64) * (x2 - x1) * 63 / 63
    expected = np.floor((rows[:, None] + 2 * cols[None, :]) / 255 * 255.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out[..., 0] - expected).max() <= 1 and (out[..., 0] == expected).mean() > 0.95
    outs = [crop(image, sample_rng(0, 0, i)) for i in range(6)]
    np.testing.assert_array_equal(outs[0], crop(image, sample_rng(0, 0, 0)))
    assert len({o.tobytes() for o in outs}) > 1


def test_brightness_is_additive_and_contrast_keeps_the_channel_mean() -> None:
    black = np.zeros((4, 4, 3), np.float32)
    np.testing.assert_allclose(adjust_brightness(black, 0.1), 0.1)  # torchvision's ×factor would stay 0
    # two colours, half the pixels each: mean m = (a + b)/2, then m + (x − m)·f per channel
    image = np.zeros((2, 2, 3), np.float32)
    image[0] = (0.2, 0.5, 0.9)
    image[1] = (0.6, 0.1, 0.3)
    out = adjust_contrast(image, 1.5)
    np.testing.assert_allclose(out[0, 0], [0.4 - 0.3, 0.3 + 0.3, 0.6 + 0.45], atol=1e-6)
    np.testing.assert_allclose(out[1, 1], [0.4 + 0.3, 0.3 - 0.3, 0.6 - 0.45], atol=1e-6)
    np.testing.assert_allclose(adjust_contrast(np.full((3, 3, 3), 0.7, np.float32), 0.8), 0.7, atol=1e-6)


def test_hsv_saturation_and_hue_match_colorsys() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((500, 3)).astype(np.float32)
    pixels[:20] = pixels[:20, :1]  # greys
    pixels[20:40, 1] = pixels[20:40, 0]  # ties between the maximum channels
    pixels[40] = 0
    reference = np.array([colorsys.rgb_to_hsv(*map(float, p)) for p in pixels])
    np.testing.assert_allclose(rgb_to_hsv(pixels), reference, atol=1e-6)
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(pixels)), pixels, atol=1e-6)
    for factor, delta in [(1.2, 0.05), (0.8, -0.05), (1.0, 0.0)]:
        expected = []
        for p in pixels:  # TensorFlow's two ops: saturation, clip, then hue
            h, s, v = colorsys.rgb_to_hsv(*map(float, p))
            h, s, v = colorsys.rgb_to_hsv(*np.clip(colorsys.hsv_to_rgb(h, min(1.0, s * factor), v), 0, 1))
            expected.append(colorsys.hsv_to_rgb((h + delta) % 1.0, s, v))
        np.testing.assert_allclose(adjust_saturation_and_hue(pixels, factor, delta), expected, atol=2e-6)


@pytest.mark.parametrize(
    ("rgb", "delta", "saturation", "hue", "expected"),
    [
        # by hand with colorsys, then TensorFlow's ×255.5 truncation:
        # (200, 100, 50)/255 + 0.05 → S ×1.1 → H +0.03 → (213.17, 132.71, 47.84)
        ((200, 100, 50), 0.05, 1.1, 0.03, (213, 132, 47)),
        ((200, 100, 50), -0.1, 0.8, -0.05, (174, 58, 54)),
        # brightness saturates blue at 1: (46.29, 139.83, 255.5 → 255)
        ((30, 160, 220), 0.2, 1.2, 0.05, (46, 139, 255)),
    ],
)
def test_openvla_augment_on_a_solid_colour(rgb, delta, saturation, hue, expected) -> None:
    image = np.full((16, 16, 3), rgb, np.uint8)
    # a solid image is unchanged by any crop and by contrast (every pixel is the mean)
    out = OpenVLAAugment().apply(image, 0.7, delta, 1.15, saturation, hue)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.broadcast_to(np.array(expected, np.uint8), image.shape))


def test_openvla_augment_order_and_draws() -> None:
    aug = OpenVLAAugment()
    u, delta, contrast, saturation, hue = aug.draw(sample_rng(0, 2, 9))
    assert 0 <= u < 1 and -0.2 <= delta < 0.2 and 0.8 <= contrast < 1.2 and 0.8 <= saturation < 1.2
    assert -0.05 <= hue < 0.05
    image = _image(32, 32)
    np.testing.assert_array_equal(aug(image, sample_rng(0, 2, 9)), aug.apply(image, u, delta, contrast, saturation, hue))
    # brightness before contrast: +0.3 saturates a bright pixel at 1 before the contrast stretch
    two = np.zeros((2, 1, 3), np.uint8)
    two[0], two[1] = 230, 100
    plain = OpenVLAAugment(crop_scale=None, saturation=None, hue=None, brightness=0.5)
    out = plain.apply(two, 0.0, 0.3, 1.2, 1.0, 0.0)
    # (230/255 + 0.3 → 1, 100/255 + 0.3 = 0.69216); mean 0.84608; ×1.2 about it
    high, low = 1.0, 100 / 255 + 0.3
    mean = (high + low) / 2
    np.testing.assert_array_equal(
        out[:, 0, 0], [int(min(1.0, mean + (high - mean) * 1.2) * 255.5), int((mean + (low - mean) * 1.2) * 255.5)]
    )
    # every disabled: the identity
    off = OpenVLAAugment(crop_scale=None, brightness=None, contrast=None, saturation=None, hue=None)
    np.testing.assert_array_equal(off(image, sample_rng(0, 0, 0)), image)


def test_openvla_pipeline_resizes_lanczos_first_and_is_seeded() -> None:
    image = _image(256, 256)
    transform = openvla_image_transform(augment=True)
    out = transform(image, sample_rng(5, 1, 42))
    resized = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out, OpenVLAAugment()(resized, sample_rng(5, 1, 42)))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, transform(image, sample_rng(5, 1, 42)))  # (seed, epoch, index) only
    assert not np.array_equal(out, transform(image, sample_rng(5, 2, 42)))
    assert not np.array_equal(out, transform(image, sample_rng(5, 1, 43)))
    assert not np.array_equal(out, transform(image, sample_rng(6, 1, 42)))
    np.testing.assert_array_equal(openvla_image_transform(augment=False)(image, sample_rng(5, 1, 42)), resized)
    assert isinstance(openvla_image_transform(augment=False), Resize)
    restored = pickle.loads(pickle.dumps(transform))  # DataLoader workers get a copy
    np.testing.assert_array_equal(restored(image, sample_rng(5, 1, 42)), out)


def test_rotate_180() -> None:
    image = _image()
    np.testing.assert_array_equal(rotate_180(image)[0, 0], image[-1, -1])
    np.testing.assert_array_equal(rotate_180(rotate_180(image)), image)


def _samples(n: int = 3) -> list[dict]:
    return [
        {
            "image": np.full((8, 6, 3), i, np.uint8),
            "instruction": f"task {i}",
            "actions": torch.full((4, 7), float(i)),
            "action_mask": torch.tensor([True, True, i == 0, False]),
            "episode_index": i,
            "frame_index": 0,
        }
        for i in range(n)
    ]


def fake_inputs_fn(images: list[np.ndarray], instructions: list[str]) -> dict[str, torch.Tensor]:
    """A stand-in for a backbone's processor (module-level, hence picklable)."""
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    ids = torch.tensor([[len(t)] for t in instructions])
    return {"pixel_values": pixels, "input_ids": ids}


def test_raw_collation() -> None:
    batch = VLACollator()(_samples())
    assert set(batch) == {"images", "instructions", "actions", "action_mask"}
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (3, 8, 6, 3)
    assert batch["actions"].dtype == torch.float32 and batch["actions"].shape == (3, 4, 7)
    assert batch["action_mask"].dtype == torch.bool and batch["action_mask"].shape == (3, 4)
    assert batch["instructions"] == ["task 0", "task 1", "task 2"]
    assert batch["action_mask"][0].tolist() == [True, True, True, False]


def test_collation_through_inputs_fn_is_picklable() -> None:
    collator = pickle.loads(pickle.dumps(VLACollator(fake_inputs_fn)))
    batch = collator(_samples())
    assert set(batch) == {"inputs", "actions", "action_mask"}
    assert batch["inputs"]["pixel_values"].shape == (3, 3, 8, 6)
    assert batch["inputs"]["input_ids"].tolist() == [[6], [6], [6]]


def test_raw_collation_rejects_mixed_sizes() -> None:
    samples = _samples(2)
    samples[1]["image"] = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="one shape"):
        VLACollator()(samples)

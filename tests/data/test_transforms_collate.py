from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from vlm4vla.data.collate import VLACollator
from vlm4vla.data.transforms import RandomResizedCrop, RandomShift, rotate_180, sample_rng


def _image(h: int = 64, w: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(h, w, 3), dtype=np.uint8)


def test_sample_rng_depends_only_on_seed_epoch_index() -> None:
    a = sample_rng(3, 1, 17).integers(0, 1 << 30, 4)
    np.testing.assert_array_equal(a, sample_rng(3, 1, 17).integers(0, 1 << 30, 4))
    assert not np.array_equal(a, sample_rng(3, 2, 17).integers(0, 1 << 30, 4))
    assert not np.array_equal(a, sample_rng(4, 1, 17).integers(0, 1 << 30, 4))


def test_random_shift_is_a_padded_crop() -> None:
    image = _image()
    shift = RandomShift(pad=4)
    out = shift(image, sample_rng(0, 0, 0))
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, shift(image, sample_rng(0, 0, 0)))
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="edge")
    dy, dx = sample_rng(0, 0, 0).integers(0, 9, size=2)
    np.testing.assert_array_equal(out, padded[dy : dy + 64, dx : dx + 48])
    np.testing.assert_array_equal(RandomShift(0)(image, sample_rng(0, 0, 0)), image)


def test_random_resized_crop_keeps_size_and_is_seeded() -> None:
    image = _image(128, 128)
    crop = RandomResizedCrop(0.9)
    outs = [crop(image, sample_rng(0, 0, i)) for i in range(6)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    np.testing.assert_array_equal(outs[0], crop(image, sample_rng(0, 0, 0)))
    assert len({o.tobytes() for o in outs}) > 1
    with pytest.raises(ValueError):
        RandomResizedCrop(1.5)


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

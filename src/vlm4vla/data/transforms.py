"""Image transforms on uint8 (H, W, 3) numpy arrays.

Augmentations take an explicit :class:`numpy.random.Generator`. Datasets seed it from
``(seed, epoch, index)`` with :func:`sample_rng`, so an augmented sample depends only on those
three numbers — not on the number of DataLoader workers, the process, or the order in which
samples are fetched.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

ImageTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample's augmentation."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


def rotate_180(image: np.ndarray) -> np.ndarray:
    """Flip vertically and horizontally (LIBERO storage / simulator convention → upright)."""
    return np.ascontiguousarray(image[::-1, ::-1])


class RandomShift:
    """Pad by ``pad`` pixels (edge replication) and crop back at a random offset (CALVIN).

    The integer-shift variant of the DrQ / RoboVLMs ``RandomShiftsAug`` (pad 10 on the
    200×200 static camera).
    """

    def __init__(self, pad: int = 10) -> None:
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.pad = int(pad)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.pad == 0:
            return image
        h, w = image.shape[:2]
        padded = np.pad(image, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)), mode="edge")
        dy, dx = rng.integers(0, 2 * self.pad + 1, size=2)
        return np.ascontiguousarray(padded[dy : dy + h, dx : dx + w])

    def __repr__(self) -> str:
        return f"RandomShift(pad={self.pad})"


class RandomResizedCrop:
    """Crop ``scale`` of the image area (aspect ``ratio``) at a random position, resize back.

    With the defaults this is the OpenVLA / Octo Bridge and LIBERO augmentation
    (``random_resized_crop`` with scale 0.9, ratio 1). Output size = input size.
    """

    def __init__(self, scale: float = 0.9, ratio: float = 1.0) -> None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        if ratio <= 0:
            raise ValueError(f"ratio must be > 0, got {ratio}")
        self.scale = float(scale)
        self.ratio = float(ratio)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        area = self.scale * h * w
        ch = min(h, max(1, round(float(np.sqrt(area / self.ratio)))))
        cw = min(w, max(1, round(float(np.sqrt(area * self.ratio)))))
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        crop = image[y0 : y0 + ch, x0 : x0 + cw]
        if (ch, cw) == (h, w):
            return np.ascontiguousarray(crop)
        return np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR))

    def __repr__(self) -> str:
        return f"RandomResizedCrop(scale={self.scale}, ratio={self.ratio})"


__all__ = ["ImageTransform", "RandomResizedCrop", "RandomShift", "rotate_180", "sample_rng"]

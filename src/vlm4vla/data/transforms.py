"""Image transforms on uint8 (H, W, 3) numpy arrays: the released VLM4VLA training pipelines.

Augmentations take an explicit :class:`numpy.random.Generator`. Datasets seed it from
``(seed, epoch, index)`` with :func:`sample_rng`, so an augmented sample depends only on those
three numbers — not on the number of DataLoader workers, the process, or the order in which
samples are fetched. Every transform is ``transform(image, rng) -> image`` (uint8 in, uint8 out).

What the released code (CladernyJorn/VLM4VLA, on RoboVLMs) does, reimplemented here with
numpy/PIL (no torchvision, no TensorFlow):

* **CALVIN** (``vlm4vla/data/calvin_dataset.py``, ``BaseCalvinDataset.__getitem__``): each frame
  goes through the backbone's image function first — a bicubic resize to 224² — and then
  ``RandomShiftsAug(rgb_pad=10)``: replicate padding by 10 and a ``grid_sample`` on a grid
  translated by an integer number of pixels, i.e. an integer crop of the padded image
  (:class:`RandomShift`). → :func:`calvin_image_transform`.
* **Bridge / LIBERO** (``vlm4vla/data/base_openvla_dataset.py`` → OpenVLA's RLDS pipeline,
  ``openvla/prismatic/vla/datasets/rlds/{dataset,obs_transforms}.py`` → dlimp's
  ``augment_image``): decode, resize to 224² with TensorFlow's antialiased ``lanczos3`` (uint8),
  then, for training, in float [0, 1] with a clip after every op: ``random_resized_crop``
  (scale 0.9, ratio 1), ``random_brightness`` 0.2, ``random_contrast`` [0.8, 1.2],
  ``random_saturation`` [0.8, 1.2], ``random_hue`` 0.05, in that order, and back to uint8
  (:class:`OpenVLAAugment`). → :func:`openvla_image_transform`.

Training only: validation samples (and training ones with ``image_augmentation=False``) are the
stored frames, which the backbone's input path resizes with bicubic (`vlm4vla.imaging.resize_image`),
as the released CALVIN validation and every released evaluation do (the released RLDS validation
would use Lanczos: a few levels of difference on the validation loss only). ``augment=False`` /
:class:`Resize` give the deterministic resize alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vlm4vla.imaging import (
    DEFAULT_RESAMPLE,
    RESAMPLE_FILTERS,
    ROW_BLOCK,
    crop_and_resize,
    resize_image,
    scratch,
    to_unit_float,
    unit_float_to_uint8,
)

ImageTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

#: The released CALVIN pipeline's resize (torchvision ``T.Resize(..., BICUBIC)`` in the backbone's
#: image function, applied before the shift).
CALVIN_RESAMPLE = "bicubic"
#: The released RLDS pipeline's resize (dlimp ``resize_image``: ``tf.image.resize(...,
#: "lanczos3", antialias=True)``); PIL's Lanczos is the same kernel (a few levels apart at most, see
#: `vlm4vla.imaging`).
RLDS_RESAMPLE = "lanczos"
#: The released training resolution (``"image_size": 224`` in every released config).
IMAGE_SIZE = 224


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample's augmentation."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


class Resize:
    """Deterministic resize to ``size`` with :func:`vlm4vla.imaging.resize_image` (``rng`` unused)."""

    def __init__(self, size: int | tuple[int, int] = IMAGE_SIZE, resample: str = DEFAULT_RESAMPLE) -> None:
        if resample not in RESAMPLE_FILTERS:
            raise ValueError(f"resample: expected one of {sorted(RESAMPLE_FILTERS)}, got {resample!r}")
        self.size = size
        self.resample = resample

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return resize_image(image, self.size, self.resample)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, resample={self.resample!r})"


class Compose:
    """Apply ``transforms`` in order, all with the sample's generator."""

    def __init__(self, *transforms: ImageTransform) -> None:
        self.transforms = tuple(transforms)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for transform in self.transforms:
            image = transform(image, rng)
        return image

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.transforms))})"


class RandomShift:
    """Pad by ``pad`` pixels (edge replication) and crop back at a random integer offset (CALVIN).

    RoboVLMs' ``RandomShiftsAug`` (``vlm4vla/data/calvin_dataset.py``) pads with
    ``F.pad(..., "replicate")`` and calls ``grid_sample`` on a base grid of the padded image's
    pixel centres translated by ``randint · 2/(H + 2·pad)``, i.e. by a whole number of pixels:
    every sample lands exactly on a pixel centre, so the bilinear sampling is an exact copy and
    the output is ``padded[dy:dy+H, dx:dx+W]`` (up to float rounding there; exact here).
    The offsets are drawn independently for x and y. The CALVIN dataset takes the
    ``forward_traj`` path (``traj_cons=True`` by default), which draws them from
    ``randint(1, 2·pad + 1)`` — offsets 1..2·pad, never 0, so the shift is -(pad-1)..+pad
    pixels, not symmetric. ``min_offset=1`` (default) follows it; ``min_offset=0`` gives the
    symmetric DrQ variant (``forward``).
    """

    def __init__(self, pad: int = 10, min_offset: int = 1) -> None:
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if pad and not 0 <= min_offset <= 2 * pad:
            raise ValueError(f"min_offset must be in [0, 2*pad], got {min_offset}")
        self.pad = int(pad)
        self.min_offset = int(min_offset)

    def offsets(self, rng: np.random.Generator) -> tuple[int, int]:
        """(dy, dx): the top-left corner of the crop in the padded image."""
        dy, dx = rng.integers(self.min_offset, 2 * self.pad + 1, size=2)
        return int(dy), int(dx)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.pad == 0:
            return image
        h, w = image.shape[:2]
        dy, dx = self.offsets(rng)
        padded = np.pad(image, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)), mode="edge")
        return np.ascontiguousarray(padded[dy : dy + h, dx : dx + w])

    def __repr__(self) -> str:
        return f"RandomShift(pad={self.pad}, min_offset={self.min_offset})"


def _pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    low, high = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if not low <= high:
        raise ValueError(f"{name}: expected low <= high, got {value!r}")
    return float(low), float(high)


class RandomResizedCrop:
    """dlimp's ``random_resized_crop`` (OpenVLA's Bridge/LIBERO crop): uint8 in, uint8 out, same size.

    With ``scale = s`` and ``ratio = r`` the crop box has normalised sides
    ``sqrt(s / r)`` × ``sqrt(s · r)`` (clipped to 1) and is sampled back to the input size with
    TensorFlow's ``crop_and_resize`` (bilinear, :func:`vlm4vla.imaging.crop_and_resize`).
    dlimp draws the scale, the ratio and both offsets with ``tf.random.stateless_uniform`` and
    the *same* seed, i.e. from one uniform ``u``: offsets ``u·(1 − side)`` — with the released
    fixed scale 0.9 and ratio 1 the box slides along the image diagonal. This is followed
    (one ``u`` per sample). A range ``scale=(lo, hi)`` is drawn as ``lo + u·(hi − lo)`` likewise.
    """

    def __init__(self, scale: float | Sequence[float] = 0.9, ratio: float | Sequence[float] = 1.0) -> None:
        self.scale = _pair(scale, "scale")
        self.ratio = _pair(ratio, "ratio")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        if self.ratio[0] <= 0:
            raise ValueError(f"ratio must be > 0, got {ratio}")

    def box(self, u: float) -> tuple[float, float, float, float]:
        """The normalised (y1, x1, y2, x2) crop box for the uniform draw ``u`` ∈ [0, 1)."""
        scale = self.scale[0] + u * (self.scale[1] - self.scale[0])
        log_lo, log_hi = np.log(self.ratio[0]), np.log(self.ratio[1])
        ratio = float(np.exp(log_lo + u * (log_hi - log_lo)))
        height = min(1.0, float(np.sqrt(scale / ratio)))
        width = min(1.0, float(np.sqrt(scale * ratio)))
        y1, x1 = u * (1.0 - height), u * (1.0 - width)
        return y1, x1, y1 + height, x1 + width

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        box = self.box(float(rng.random()))
        return unit_float_to_uint8(crop_and_resize(to_unit_float(image), box, image.shape[:2]))

    def __repr__(self) -> str:
        return f"RandomResizedCrop(scale={self.scale}, ratio={self.ratio})"


# -- colour ops on float images in [0, 1] (TensorFlow's tf.image semantics) ----------------------
# Public functions take the channel axis (``axis=-1``: (H, W, 3); ``axis=0``: planar (3, H, W))
# and return a new array. `OpenVLAAugment` works on a planar image it owns, in place (the
# ``_..._`` helpers): per-channel planes are contiguous there, and few temporaries avoid the
# cost of fresh large allocations (see `vlm4vla.imaging.crop_and_resize`).
def adjust_brightness(image01: np.ndarray, delta: float) -> np.ndarray:
    """``tf.image.adjust_brightness`` on a float image: **additive**, ``x + delta``.

    dlimp's ``random_brightness: [0.2]`` is ``tf.image.stateless_random_brightness(max_delta=0.2)``:
    delta ~ U[-0.2, 0.2) added to the [0, 1] image (not torchvision's multiplicative factor).
    """
    return np.asarray(image01, dtype=np.float32) + np.float32(delta)


def _channel_mean(planes: np.ndarray) -> np.ndarray:
    mean = planes.reshape(planes.shape[0], -1).mean(axis=1, dtype=np.float32)
    return mean.reshape((-1,) + (1,) * (planes.ndim - 1))


def _contrast_(planes: np.ndarray, factor: float, mean: np.ndarray | None = None) -> np.ndarray:
    mean = _channel_mean(planes) if mean is None else mean
    planes -= mean
    planes *= np.float32(factor)
    planes += mean
    return planes


def adjust_contrast(image01: np.ndarray, factor: float, axis: int = -1) -> np.ndarray:
    """``tf.image.adjust_contrast``: ``(x − mean) · factor + mean``, mean per channel over the image."""
    planes = np.array(np.moveaxis(np.asarray(image01, dtype=np.float32), axis, 0), order="C")
    return np.moveaxis(_contrast_(planes, factor), 0, axis)


Bound = float | np.ndarray


def _clip01_(x: np.ndarray, zero: Bound = 0.0, one: Bound = 1.0) -> np.ndarray:
    """Clip to [0, 1] in place. numpy's ``maximum``/``minimum`` (and ``clip``) are vectorised only
    between two arrays: with a scalar bound they run several times slower, so the hot path passes
    ``zero``/``one`` arrays of ``x``'s shape."""
    np.maximum(x, zero, out=x)
    return np.minimum(x, one, out=x)


def _value_chroma_hue6(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``v = max(r, g, b)``, chroma ``c = v − min(r, g, b)`` and the hue in sixths of a turn,
    ``6h`` ∈ [0, 6), as TensorFlow's ``rgb_to_hsv`` kernel and ``colorsys``: from the sector of
    the maximum, R first, then G, then B — ``(g − b)/c``, ``(b − r)/c + 2``, ``(r − g)/c + 4``;
    0 for grey pixels.

    Sectors are selected with 0/1 weights (exact: one weight is 1, the others 0), not with
    ``where=``, which numpy runs some 30× slower than plain arithmetic."""
    value = np.maximum(r, g)
    np.maximum(value, b, out=value)
    chroma = np.minimum(r, g)
    np.minimum(chroma, b, out=chroma)
    np.subtract(value, chroma, out=chroma)
    r_max = r == value
    in_r = r_max.astype(np.float32)
    in_g = ((g == value) & ~r_max).astype(np.float32)  # G where R is not the maximum
    in_b = 1 - in_r
    in_b -= in_g
    hue6 = g - b
    hue6 *= in_r
    part = b - r
    part *= in_g
    hue6 += part
    np.subtract(r, g, out=part)
    part *= in_b
    hue6 += part
    hue6 /= chroma + (chroma <= 0)  # grey (c = 0): every difference is 0, divide by 1
    in_g *= 2  # sector offsets 0 / 2 / 4
    in_b *= 4
    hue6 += in_g
    hue6 += in_b
    hue6 += (hue6 < 0) * np.float32(6)
    return value, chroma, hue6


def _rgb_into(
    out: np.ndarray, value: np.ndarray, chroma: np.ndarray, hue6: np.ndarray, zero: Bound = 0.0, one: Bound = 1.0
) -> np.ndarray:
    """(v, c, 6h) → RGB into ``out`` (3, ...): channel ``n`` ∈ {5, 3, 1} for R, G, B is
    ``v − c·clip(min(k, 4 − k), 0, 1)`` with ``k = (n + 6h) mod 6`` (the sector formula)."""
    k = np.empty_like(hue6)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        np.add(hue6, n, out=k)
        k -= (k >= 6) * np.float32(6)  # mod 6 (np.mod is far slower)
        ramp = out[channel]
        np.subtract(4, k, out=ramp)
        np.minimum(ramp, k, out=ramp)
        _clip01_(ramp, zero, one)
        ramp *= chroma
        np.subtract(value, ramp, out=ramp)
    return out


def rgb_to_hsv(image01: np.ndarray, axis: int = -1) -> np.ndarray:
    """RGB → HSV, all in [0, 1] (hue as a fraction of a turn), as ``colorsys`` and TensorFlow's
    kernels: ``v = max``, ``s = (max − min)/max``, hue from the sector of the maximum."""
    value, chroma, hue6 = _value_chroma_hue6(*np.moveaxis(np.asarray(image01, dtype=np.float32), axis, 0))
    saturation = chroma / (value + (value <= 0))  # black: c = 0
    return np.stack([hue6 / 6, saturation, value], axis=axis)


def hsv_to_rgb(hsv: np.ndarray, axis: int = -1) -> np.ndarray:
    """HSV → RGB (inverse of :func:`rgb_to_hsv`, the sector formula)."""
    hue, saturation, value = np.moveaxis(np.asarray(hsv, dtype=np.float32), axis, 0)
    out = np.empty((3, *hue.shape), dtype=np.float32)
    return np.moveaxis(_rgb_into(out, value, value * saturation, hue * 6), 0, axis)


def _saturation_hue_(
    planes: np.ndarray, factor: float, delta: float, zero: Bound = 0.0, one: Bound = 1.0
) -> np.ndarray:
    # s' = min(s·factor, 1) at constant v is the chroma c' = v·s' = min(c·factor, v).
    value, chroma, hue6 = _value_chroma_hue6(*planes)
    chroma *= np.float32(factor)
    np.minimum(chroma, value, out=chroma)
    hue6 += np.float32(6 * delta)  # mod 6, for |delta| <= 0.5
    hue6 += (hue6 < 0) * np.float32(6)
    hue6 -= (hue6 >= 6) * np.float32(6)
    return _rgb_into(planes, value, chroma, hue6, zero, one)


def adjust_saturation_and_hue(image01: np.ndarray, factor: float, delta: float, axis: int = -1) -> np.ndarray:
    """``tf.image.adjust_saturation(factor)`` then ``tf.image.adjust_hue(delta)`` in one HSV round trip.

    Saturation: ``s ← clip(s · factor, 0, 1)``; hue: ``h ← (h + delta) mod 1``. TensorFlow converts
    to HSV and back for each op, with a clip to [0, 1] in between (dlimp); the intermediate RGB
    image is already in [0, 1] and converts back to the same (h, s·factor, v), so one round trip
    gives the same image up to float rounding.
    """
    planes = np.array(np.moveaxis(np.asarray(image01, dtype=np.float32), axis, 0), order="C")
    return np.moveaxis(_saturation_hue_(planes, factor, delta), 0, axis)


class OpenVLAAugment:
    """OpenVLA's Bridge/LIBERO training augmentation (dlimp ``augment_image``), uint8 in and out.

    ``vlm4vla/data/base_openvla_dataset.py`` (``image_aug: true`` in every released Bridge and
    LIBERO config) sets ``random_resized_crop(scale=[0.9, 0.9], ratio=[1, 1])``,
    ``random_brightness=[0.2]``, ``random_contrast=[0.8, 1.2]``, ``random_saturation=[0.8, 1.2]``,
    ``random_hue=[0.05]`` in that order. dlimp converts the uint8 image to float [0, 1], applies
    each op then clips to [0, 1], and converts back with TensorFlow's ``convert_image_dtype``
    (×255.5, truncation). Brightness is **additive** (``stateless_random_brightness``,
    max_delta 0.2), contrast scales around the per-channel mean, saturation scales HSV's S, hue
    rotates HSV's H by U[-0.05, 0.05) of a turn. The draws per sample, in this order:
    the crop's ``u``, the brightness delta, the contrast, saturation and hue values — all five
    always (a disabled op still consumes its draw), so enabling one never reshuffles the others.
    ``None`` (or a zero range) disables an op.
    """

    def __init__(
        self,
        crop_scale: float | None = 0.9,
        crop_ratio: float = 1.0,
        brightness: float | None = 0.2,
        contrast: Sequence[float] | None = (0.8, 1.2),
        saturation: Sequence[float] | None = (0.8, 1.2),
        hue: float | None = 0.05,
    ) -> None:
        self.crop = RandomResizedCrop(crop_scale, crop_ratio) if crop_scale is not None else None
        self.brightness = float(brightness or 0.0)
        self.contrast = _pair(contrast, "contrast") if contrast is not None else (1.0, 1.0)
        self.saturation = _pair(saturation, "saturation") if saturation is not None else (1.0, 1.0)
        self.hue = float(hue or 0.0)
        if self.brightness < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError(f"need brightness >= 0 and hue in [0, 0.5]; got {brightness}, {hue}")

    def draw(self, rng: np.random.Generator) -> tuple[float, float, float, float, float]:
        """(crop u, brightness delta, contrast factor, saturation factor, hue delta) of one sample."""
        u = float(rng.random())
        delta = float(rng.uniform(-self.brightness, self.brightness))
        contrast = float(rng.uniform(*self.contrast))
        saturation = float(rng.uniform(*self.saturation))
        hue = float(rng.uniform(-self.hue, self.hue))
        return u, delta, contrast, saturation, hue

    def apply(self, image: np.ndarray, u: float, delta: float, contrast: float, saturation: float, hue: float) -> np.ndarray:
        """The augmentation with given random values (uint8 → uint8)."""
        height, width = image.shape[:2]
        x = scratch("OpenVLAAugment.input", (3, height, width))  # planar float [0, 1], reused
        np.multiply(np.moveaxis(image, -1, 0), np.float32(1 / 255), out=x)  # to_unit_float
        if self.crop is not None:
            cropped = scratch("OpenVLAAugment.crop", x.shape)
            x = crop_and_resize(x, self.crop.box(u), (height, width), channels_last=False, out=cropped)
        use_contrast = self.contrast != (1.0, 1.0)
        use_colour = self.saturation != (1.0, 1.0) or self.hue != 0
        # Per-pixel ops in row blocks (small temporaries, see `vlm4vla.imaging.crop_and_resize`);
        # dlimp clips to [0, 1] after every op. The contrast mean is over the whole image, after
        # brightness: one pass up to there, the mean, then a second pass.
        # The bilinear crop is a convex combination: already in [0, 1]; so is the HSV result
        # (0 <= v - c'·ramp <= v); the final conversion clips anyway.
        blocks = [slice(r0, min(height, r0 + ROW_BLOCK)) for r0 in range(0, height, ROW_BLOCK)]
        zeros = np.zeros((3, min(height, ROW_BLOCK), x.shape[2]), dtype=np.float32)
        ones = np.ones_like(zeros)
        if self.brightness:
            for rows in blocks:
                block = x[:, rows]
                block += np.float32(delta)
                _clip01_(block, zeros[:, : block.shape[1]], ones[:, : block.shape[1]])
        mean = _channel_mean(x) if use_contrast else None
        out = np.empty(image.shape, dtype=np.uint8)
        for rows in blocks:
            block = x[:, rows]
            zero, one = zeros[:, : block.shape[1]], ones[:, : block.shape[1]]
            if use_contrast:
                _clip01_(_contrast_(block, contrast, mean), zero, one)
            if use_colour:
                _saturation_hue_(block, saturation, hue, zero[0], one[0])
            _clip01_(block, zero, one)
            block *= np.float32(255.5)  # TensorFlow's convert_image_dtype: ×255.5, truncation
            out[rows] = np.moveaxis(block, 0, -1)
        return out

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, *self.draw(rng))

    def __repr__(self) -> str:
        return (
            f"OpenVLAAugment(crop={self.crop!r}, brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue})"
        )


# -- the released pipelines -----------------------------------------------------------------------
def calvin_image_transform(
    *, augment: bool, size: int = IMAGE_SIZE, pad: int = 10, resample: str = CALVIN_RESAMPLE
) -> ImageTransform:
    """CALVIN: bicubic resize to ``size``, then (training) the random shift with ``pad``."""
    resize = Resize(size, resample)
    return Compose(resize, RandomShift(pad)) if augment and pad > 0 else resize


def openvla_image_transform(
    *, augment: bool, size: int = IMAGE_SIZE, crop_scale: float = 0.9, resample: str = RLDS_RESAMPLE
) -> ImageTransform:
    """Bridge / LIBERO: resize to ``size`` (Lanczos, as the RLDS decode), then (training)
    OpenVLA's crop and colour augmentation."""
    resize = Resize(size, resample)
    return Compose(resize, OpenVLAAugment(crop_scale=crop_scale)) if augment else resize


__all__ = [
    "CALVIN_RESAMPLE",
    "IMAGE_SIZE",
    "RLDS_RESAMPLE",
    "Compose",
    "ImageTransform",
    "OpenVLAAugment",
    "RandomResizedCrop",
    "RandomShift",
    "Resize",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation_and_hue",
    "calvin_image_transform",
    "hsv_to_rgb",
    "openvla_image_transform",
    "rgb_to_hsv",
    "sample_rng",
]

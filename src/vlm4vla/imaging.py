"""Image operations that training and evaluation must apply identically (numpy and PIL only).

The data layer and the evaluator plugins both import them from here, so a plugin never imports
`vlm4vla.data` (and with it Lightning) for a rotation or a resize, and the two sides cannot
drift apart.

Resampling (what the released VLM4VLA code does, CladernyJorn/VLM4VLA):

* every backbone's own input path resizes with **bicubic** — torchvision
  ``T.Resize(..., InterpolationMode.BICUBIC)`` on a PIL image in
  ``vlm4vla/model/backbone/base_backbone.py`` / ``roboqwen25vl.py`` / ``roboqwen3vl.py``
  (Kosmos-2 uses the base one), the SigLIP image processor (PIL bicubic) for PaliGemma. On a
  PIL image torchvision's resize *is* ``PIL.Image.resize(..., BICUBIC)``, so :func:`resize_image`
  with ``"bicubic"`` reproduces it exactly; it is what the CALVIN pipeline and the CALVIN and
  SimplerEnv evaluations apply;
* the RLDS (Bridge, LIBERO) training pipeline resizes earlier, when decoding, with TensorFlow's
  ``lanczos3`` with antialiasing (dlimp ``resize_image``, used by
  ``openvla/prismatic/vla/datasets/rlds/obs_transforms.py``): ``"lanczos"`` here, PIL's
  antialiased Lanczos-3 — the same kernel, support and pixel-centre convention. PIL works in
  fixed point and clips to uint8 between its horizontal and vertical passes where TensorFlow
  stays in float: for 256² → 224² (the released Bridge/LIBERO data) pixels differ from an exact
  float Lanczos-3 by at most 3 levels, 0.2 on average (measured on a textured test image).
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

#: Resampling filters by name; :func:`resize_image` takes one of these keys.
RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
#: The backbones' input resize (and the library's default): bicubic, as in the released code.
DEFAULT_RESAMPLE = "bicubic"
#: Rows per block of the per-pixel float loops (here and in `vlm4vla.data.transforms`).
ROW_BLOCK = 56


_SCRATCH = threading.local()


def scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work buffer reused across calls in this thread (never returned to callers).

    Per-sample image code that allocates several fresh ~0.6 MB arrays makes glibc hand the pages
    back to the OS and fault them in again on every call, which costs more than the arithmetic
    on them (measured: 1.3 ms vs 0.1 ms for three 224² RGB float temporaries); reusing them avoids it.
    """
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    buffer = buffers.get(name)
    if buffer is None or buffer.shape != shape:
        buffer = buffers[name] = np.empty(shape, dtype=np.float32)
    return buffer


def rotate_180(image: np.ndarray) -> np.ndarray:
    """Flip vertically and horizontally (LIBERO storage / simulator convention → upright)."""
    return np.ascontiguousarray(image[::-1, ::-1])


def libero_image_to_upright(image: np.ndarray) -> np.ndarray:
    """LIBERO simulator / HDF5 camera image → the upright orientation the policy is trained on."""
    return rotate_180(image)


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"size: expected positive sides, got {size!r}")
    return int(height), int(width)


def _filter(resample: str) -> Image.Resampling:
    try:
        return RESAMPLE_FILTERS[resample]
    except (KeyError, TypeError):
        raise ValueError(f"resample: expected one of {sorted(RESAMPLE_FILTERS)}, got {resample!r}") from None


def resize_image(
    image: np.ndarray | Image.Image, size: int | tuple[int, int], resample: str = DEFAULT_RESAMPLE
) -> np.ndarray | Image.Image:
    """An RGB image resized to ``size`` (a side, or ``(height, width)``) with PIL's ``resample``.

    The one resize of the library: the backbones' input path (`vlm4vla.backbones.base`), the
    datamodules' transforms and the evaluator plugins call it. A uint8 (H, W, C) array gives a
    contiguous uint8 array, a PIL image a PIL image. An image already of that size is returned
    as is (an array made contiguous): no resampling.
    """
    height, width = _size(size)
    pil_filter = _filter(resample)
    if isinstance(image, Image.Image):
        return image if image.size == (width, height) else image.resize((width, height), pil_filter)
    array = np.ascontiguousarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"resize_image: expected a uint8 image, got {array.dtype}")
    if array.shape[:2] == (height, width):
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), pil_filter))


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 → float32 in [0, 1] (``x · (1/255)``, TensorFlow's ``convert_image_dtype``), C-contiguous."""
    return np.asarray(image, dtype=np.float32, order="C") * np.float32(1.0 / 255.0)


def unit_float_to_uint8(image: np.ndarray) -> np.ndarray:
    """float in [0, 1] → uint8 as TensorFlow's ``convert_image_dtype(..., saturate=True)`` does.

    TensorFlow scales by 255.5 and truncates (``dtype.max + 0.5``, "to avoid rounding problems
    in the cast"), after clipping. So ``k / 255`` maps back to ``k`` for every uint8 ``k``.
    """
    scaled = np.maximum(image, 0, dtype=np.float32)  # (np.clip is slow on small arrays)
    np.minimum(scaled, 1, out=scaled)
    scaled *= np.float32(255.5)
    return scaled.astype(np.uint8)  # truncation, as TensorFlow's cast; 1.0 → 255


def crop_and_resize(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    size: int | tuple[int, int],
    *,
    channels_last: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The normalised ``box = (y1, x1, y2, x2)`` of an (H, W, C) image bilinearly sampled to ``size``.

    TensorFlow's ``tf.image.crop_and_resize`` semantics (used by dlimp's ``random_resized_crop``
    and by the released LIBERO evaluation's centre crop, ``eval/libero/model_wrapper.py``):
    output row ``i`` samples input row ``y1·(H−1) + i·(y2−y1)·(H−1)/(out_h−1)`` (the box corners
    map to pixel centres, no antialiasing) and interpolates along x first, then y. Returns float32
    (integer inputs are sampled as their values; pass :func:`to_unit_float` output for [0, 1]).
    ``channels_last=False`` takes and returns a planar (C, H, W) image, written into ``out``
    (float32, (C, out_h, out_w)) if given (``out`` is ignored for channels-last images).
    """
    out_h, out_w = _size(size)
    src = np.asarray(image)
    if src.ndim != 3:
        raise ValueError(f"crop_and_resize: expected an (H, W, C) image, got shape {src.shape}")
    planar = np.moveaxis(src, -1, 0) if channels_last else src  # (C, H, W): row gathers are cheap
    planar = np.ascontiguousarray(planar, dtype=np.float32)
    height, width = planar.shape[1:]
    y1, x1, y2, x2 = (float(v) for v in box)

    def coordinates(lo: float, hi: float, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if n_out > 1:
            pos = lo * (n_in - 1) + np.arange(n_out, dtype=np.float32) * np.float32((hi - lo) * (n_in - 1) / (n_out - 1))
        else:
            pos = np.full(1, 0.5 * (lo + hi) * (n_in - 1), dtype=np.float32)
        if pos.min() < 0 or pos.max() > n_in - 1 + 1e-4:
            raise ValueError(f"crop_and_resize: box {box} reaches outside the image")
        pos = np.clip(pos, 0, n_in - 1)
        first = np.floor(pos).astype(np.intp)
        second = np.ceil(pos).astype(np.intp)
        return first, second, (pos - first).astype(np.float32)

    top, bottom, y_lerp = coordinates(y1, y2, height, out_h)
    left, right, x_lerp = coordinates(x1, x2, width, out_w)
    # TensorFlow interpolates each output pixel along x on its top and bottom source rows, then
    # along y. The x pass depends only on the source row, so it is done once per source row
    # (identical arithmetic), then the y pass per output row. Gathers run along axis 1 only
    # (whole contiguous rows, an order of magnitude faster than gathering columns): the x pass
    # on the transposed image; blocks keep the temporaries small, the large buffers are reused
    # (`scratch`).
    channels = planar.shape[0]
    columns = scratch("crop_and_resize.columns", (channels, width, height))
    columns[...] = planar.transpose(0, 2, 1)
    across = scratch("crop_and_resize.across", (channels, height, out_w))
    for c0 in range(0, out_w, ROW_BLOCK):
        cols = slice(c0, min(out_w, c0 + ROW_BLOCK))
        across[:, :, cols] = _lerp_rows(columns, left[cols], right[cols], x_lerp[cols]).transpose(0, 2, 1)
    if out is None or channels_last:
        out = np.empty((channels, out_h, out_w), dtype=np.float32)
    for r0 in range(0, out_h, ROW_BLOCK):
        rows = slice(r0, min(out_h, r0 + ROW_BLOCK))
        out[:, rows] = _lerp_rows(across, top[rows], bottom[rows], y_lerp[rows])
    return np.ascontiguousarray(np.moveaxis(out, 0, -1)) if channels_last else out


def _lerp_rows(source: np.ndarray, low: np.ndarray, high: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``source[:, low] + (source[:, high] − source[:, low])·weight`` along axis 1, in place where possible."""
    value = np.take(source, low, axis=1)
    step = np.take(source, high, axis=1)
    step -= value
    step *= weight[:, None]
    value += step
    return value


def center_crop_resize(image: np.ndarray, area: float, size: int | tuple[int, int]) -> np.ndarray:
    """The centred square-aspect crop of ``area`` (fraction) of a uint8 image, resized to ``size``.

    What the released LIBERO evaluation does to the 256² camera image of a policy trained with
    the random-resized-crop augmentation (``eval/libero/model_wrapper.py``, ``center_crop``:
    sides ``sqrt(area)``, TensorFlow ``crop_and_resize`` to 224², back to uint8).
    """
    if not 0 < area <= 1:
        raise ValueError(f"area must be in (0, 1], got {area}")
    side = float(np.sqrt(area))
    lo = (1.0 - side) / 2.0
    return unit_float_to_uint8(crop_and_resize(to_unit_float(image), (lo, lo, lo + side, lo + side), size))


def policy_image(image: np.ndarray, size: int | tuple[int, int], *, center_crop: float | None = None) -> np.ndarray:
    """A camera image (uint8 (H, W, 3), upright) → the policy's input at ``size``: every evaluator's
    one resize, so each suite feeds the policy what training fed it.

    ``center_crop=None``: the bicubic :func:`resize_image` the backbones' input path applies in
    training (CALVIN 200² → 224², SimplerEnv 640×480 → 224²; a no-op at the policy's size).
    ``center_crop=area``: :func:`center_crop_resize`, for a policy trained with the random
    resized crop of that area (LIBERO and Bridge RLDS pipelines, evaluated as the released code does).
    """
    if center_crop is not None:
        return center_crop_resize(image, center_crop, size)
    return resize_image(np.ascontiguousarray(image), size)


__all__ = [
    "DEFAULT_RESAMPLE",
    "RESAMPLE_FILTERS",
    "center_crop_resize",
    "policy_image",
    "crop_and_resize",
    "libero_image_to_upright",
    "resize_image",
    "rotate_180",
    "to_unit_float",
    "unit_float_to_uint8",
]

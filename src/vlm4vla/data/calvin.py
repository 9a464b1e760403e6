"""CALVIN ABC→D datamodule, reading the original ``task_ABC_D`` npz frames directly.

A sample is one frame ``t`` of an annotated language window ``[start, end]`` (end
inclusive) of ``lang_annotations/auto_lang_ann.npy``:

- ``image``: ``rgb_static`` of frame ``t`` (200×200 RGB, upright as stored);
- ``instruction``: the window's annotation;
- ``actions``: ``rel_actions`` of frames ``t … t+N-1``, arm dims clipped to ±0.65 and scaled
  to [-1, 1]; gripper -1/+1 → 0/1 (+1, which is *open* in CALVIN, → 1). Steps past the last
  usable frame repeat its action and are masked out in ``action_mask``;
- ``episode_index``: the language window's index; ``frame_index``: the global frame id.

Window end (``window_end``): ``"exclusive"`` (default, as released) samples ``t ∈ [start, end-1]``
and masks the action at ``end`` — what the released RoboVLMs-based ``DiskCalvinDataset`` does
(``_build_file_indices_lang`` stops at ``end + 1 - window_size`` and its right-pad offset masks
frame ``end``, in ``vlm4vla/data/calvin_dataset.py``); ``"inclusive"`` samples ``t ∈ [start, end]``
with the action at ``end`` valid.

Splits are the dataset's own ``training`` and ``validation`` folders. Training images are resized to
224² (bicubic) and get a seeded random shift (pad 10), as released
(:func:`~vlm4vla.data.transforms.calvin_image_transform`); validation images are as stored (the
backbone resizes them, bicubic).

Throughput: the first setup reads the ``rel_actions`` of every annotated frame once and caches
them (``vlm4vla_cache/`` next to the split, or the user cache dir if read-only). After that a
sample opens exactly one npz and decompresses one member (``rgb_static``) — unlike loaders that
open every npz of the window per sample.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from vlm4vla.data import cache
from vlm4vla.data.datamodule import VLADataModule
from vlm4vla.data.dataset import ChunkDataset, prepare_actions
from vlm4vla.data.formats.base import DatasetFormatError
from vlm4vla.data.formats.npz_calvin import EP_START_END_PATH, LANG_ANN_PATH, CalvinReader
from vlm4vla.data.transforms import calvin_image_transform
from vlm4vla.policy.action_space import CALVIN_ACTION_BOUND, ActionNormalizer, calvin_normalizer

log = logging.getLogger(__name__)


class CalvinDataset(ChunkDataset):
    """Every frame of the selected language windows of a CALVIN split."""

    def __init__(self, reader: CalvinReader, windows: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reader = reader
        self.windows = np.asarray(windows, dtype=np.int64)

    def load_image(self, segment: int, step: int) -> np.ndarray:
        return self.reader.frame(int(self.reader.windows[self.windows[segment], 0]) + step)

    def metadata(self, segment: int, step: int) -> dict[str, int]:
        window = int(self.windows[segment])
        return {"episode_index": window, "frame_index": int(self.reader.windows[window, 0]) + step}


def load_window_actions(
    reader: CalvinReader, *, cache_dir: str | Path | None = None, num_threads: int = 1
) -> dict[str, np.ndarray]:
    """``frames`` (sorted unique annotated frame ids) and their raw ``rel_actions``, cached.

    The cache is keyed on the annotation and episode-range files and on the frame files'
    count, total size and newest mtime (directory stats only), so an edited, added or removed
    frame is re-read.
    """
    key_files = [reader.root / LANG_ANN_PATH, reader.root / EP_START_END_PATH]
    frames_summary = cache.directory_summary(reader.root, ".npz")
    name = f"calvin-{reader.root.name}-{cache.fingerprint(key_files, reader.root, extra=frames_summary)}"
    arrays = cache.load_arrays(reader.root, name, cache_dir)
    if arrays is not None:
        return arrays
    frames = reader.window_frames()
    log.info("CALVIN: reading rel_actions of %d annotated frames in %s (once)", len(frames), reader.root)
    arrays = {"frames": frames, "rel_actions": reader.read_rel_actions(frames, num_threads=num_threads)}
    try:
        path = cache.save_arrays(reader.root, name, arrays, cache_dir)
        log.info("CALVIN: action index cached at %s", path)
    except OSError as err:
        log.warning("CALVIN: could not cache the action index (%s)", err)
    return arrays


WINDOW_ENDS = ("exclusive", "inclusive")


class CalvinDataModule(VLADataModule):
    """CALVIN (``task_ABC_D`` or any CALVIN-layout root with training/validation folders).

    Args:
        root: the dataset root holding ``train_split`` and ``val_split`` directories.
        chunk_size: N, the number of future actions per sample (paper: 10).
        image_key: npz camera key used as the single image (``rgb_static``).
        shift_pad: random-shift padding in pixels for training augmentation.
        action_bound: relative actions are clipped to ±bound and divided by it.
        window_end: ``"exclusive"`` (default, released: frames ``start … end-1``, the action at
            ``end`` masked) or ``"inclusive"`` (frames ``start … end``); see the module docstring.
        val_split: ``None`` to train without validation.
        Other keyword arguments: see :class:`~vlm4vla.data.datamodule.VLADataModule`.
    """

    dataset_name = "calvin"

    def __init__(
        self,
        root: str | Path,
        *,
        chunk_size: int = 10,
        train_split: str = "training",
        val_split: str | None = "validation",
        image_key: str = "rgb_static",
        shift_pad: int = 10,
        action_bound: float = CALVIN_ACTION_BOUND,
        window_end: str = "exclusive",
        **kwargs: Any,
    ) -> None:
        if window_end not in WINDOW_ENDS:
            raise ValueError(f"CalvinDataModule: window_end must be one of {WINDOW_ENDS}, got {window_end!r}")
        super().__init__(chunk_size=chunk_size, **kwargs)
        self.window_end = window_end
        self.root = Path(root)
        self.train_split = train_split
        self.val_split = val_split
        self.image_key = image_key
        self.shift_pad = int(shift_pad)
        self.action_bound = float(action_bound)
        self._readers: dict[str, CalvinReader] = {}

    def reader(self, split: str) -> CalvinReader:
        """The :class:`CalvinReader` of ``"train"`` or ``"val"``."""
        if split not in self._readers:
            if not self.root.is_dir():
                raise DatasetFormatError(f"{self.root}: CALVIN dataset directory not found")
            folder = self.train_split if split == "train" else self.val_split
            if folder is None:
                raise ValueError(f"{type(self).__name__}: no {split} split configured")
            self._readers[split] = CalvinReader(self.root / folder, image_key=self.image_key)
        return self._readers[split]

    def _splits(self, stage: str | None) -> list[str]:
        wanted = ["train", "val"] if stage in (None, "fit") else ["val"]
        return [s for s in wanted if s == "train" or self.val_split is not None]

    def _compute_normalizer(self) -> ActionNormalizer:
        return calvin_normalizer(self.action_bound)

    def data_options(self) -> dict[str, Any]:
        return {"window_end": self.window_end}

    def prepare_data(self) -> None:
        """Read and cache the annotated frames' actions of both splits (once per node)."""
        for split in self._splits(None):
            load_window_actions(
                self.reader(split), cache_dir=self.cache_dir, num_threads=max(1, self.num_workers)
            )

    def _build_datasets(self, stage: str | None) -> None:
        normalizer = self.normalizer
        for split in self._splits(stage):
            reader = self.reader(split)
            arrays = load_window_actions(
                reader, cache_dir=self.cache_dir, num_threads=max(1, self.num_workers)
            )
            frames, raw = arrays["frames"], arrays["rel_actions"]
            starts, ends = reader.windows[:, 0], reader.windows[:, 1]
            offsets = np.searchsorted(frames, starts)
            # exclusive: the frame at ``end`` is neither sampled nor a valid chunk step
            lengths = ends - starts + (1 if self.window_end == "inclusive" else 0)
            keep = []
            for w in range(len(reader.windows)):
                if lengths[w] <= 0:  # a one-frame window has no usable frame when exclusive
                    continue
                window = raw[offsets[w] : offsets[w] + lengths[w]]
                first_bad = reader.frame_path(int(starts[w]) + int(np.argmin(np.isfinite(window).all(1))))
                if self._check_nan(window, str(first_bad), "rel_actions"):
                    keep.append(w)
            skipped = int(np.sum(lengths > 0)) - len(keep)
            if skipped:
                log.warning(
                    "CALVIN: skipped %d language window(s) with NaN/inf rel_actions in %s",
                    skipped,
                    reader.root,
                )
            keep_arr = np.asarray(keep, dtype=np.int64)
            if split == "train" and len(keep_arr) == 0:
                raise DatasetFormatError(f"{reader.lang_path}: no usable language windows")
            self._datasets[split] = CalvinDataset(
                reader,
                keep_arr,
                lengths=lengths[keep_arr],
                row_offsets=offsets[keep_arr],
                actions=prepare_actions(raw, normalizer),
                instructions=[reader.instructions[w] for w in keep_arr],
                chunk_size=self.chunk_size,
                transform=calvin_image_transform(augment=True, size=self.image_size, pad=self.shift_pad)
                if (split == "train" and self.image_augmentation)
                else None,
                seed=self.seed,
            )


__all__ = ["CalvinDataModule", "CalvinDataset", "load_window_actions"]

"""CALVIN split reader (``task_ABC_D/training`` or ``task_ABC_D/validation``).

On disk (see ``datasets.md``): one ``episode_{i:07d}.npz`` per 30 Hz frame with global,
non-zero-based indices; ``ep_start_end_ids.npy`` (inclusive recorded-episode ranges) and
``lang_annotations/auto_lang_ann.npy`` (a pickled dict of language windows, end inclusive).

The reader is frame-indexed. Reading one field of one frame opens that frame's npz and
decompresses only that member; nothing is kept open, so the reader pickles to DataLoader
workers as a handful of small arrays.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vlm4vla.data.formats.base import DatasetFormatError, one_line

LANG_ANN_PATH = Path("lang_annotations") / "auto_lang_ann.npy"
EP_START_END_PATH = Path("ep_start_end_ids.npy")
CALVIN_IMAGE_KEYS = ("rgb_static", "rgb_gripper")


class CalvinReader:
    """Random access to the frames and language windows of one CALVIN split directory."""

    def __init__(self, split_dir: str | Path, *, image_key: str = "rgb_static") -> None:
        self.root = Path(split_dir)
        if not self.root.is_dir():
            raise DatasetFormatError(f"{self.root}: CALVIN split directory not found")
        self.image_key = image_key
        self.lang_path = self.root / LANG_ANN_PATH
        self.episodes = self._load_episode_ranges(self.root / EP_START_END_PATH)
        self.windows, self.instructions, self.tasks = self._load_language(self.lang_path)
        self._check_windows_inside_episodes()

    # -- metadata -------------------------------------------------------------------------
    @staticmethod
    def _load_episode_ranges(path: Path) -> np.ndarray:
        if not path.is_file():
            raise DatasetFormatError(f"{path}: file not found (CALVIN recorded-episode ranges)")
        try:
            ranges = np.load(path, allow_pickle=False)
        except Exception as err:
            raise DatasetFormatError(f"{path}: cannot read episode ranges: {one_line(err)}") from err
        ranges = np.asarray(ranges)
        if ranges.ndim != 2 or ranges.shape[1] != 2 or not np.issubdtype(ranges.dtype, np.integer):
            raise DatasetFormatError(
                f"{path}: expected integer (E, 2) start/end frame ids, got {ranges.dtype} {ranges.shape}"
            )
        return ranges.astype(np.int64)[np.argsort(ranges[:, 0], kind="stable")]

    @staticmethod
    def _load_language(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
        if not path.is_file():
            raise DatasetFormatError(f"{path}: language annotation file not found")
        try:
            ann = np.load(path, allow_pickle=True).item()
        except Exception as err:
            raise DatasetFormatError(f"{path}: cannot read language annotations: {one_line(err)}") from err
        if not isinstance(ann, dict):
            raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(ann).__name__}")
        try:
            texts = [str(t) for t in ann["language"]["ann"]]
        except (KeyError, TypeError) as err:
            raise DatasetFormatError(f"{path}: missing field 'language/ann'") from err
        try:
            indx = ann["info"]["indx"]
        except (KeyError, TypeError) as err:
            raise DatasetFormatError(f"{path}: missing field 'info/indx'") from err
        tasks_raw = ann["language"].get("task") if isinstance(ann["language"], dict) else None
        tasks = [str(t) for t in tasks_raw] if tasks_raw is not None else [""] * len(texts)
        windows = np.asarray(indx, dtype=np.int64).reshape(-1, 2) if len(indx) else np.zeros((0, 2), np.int64)
        if len(windows) != len(texts) or len(tasks) != len(texts):
            raise DatasetFormatError(
                f"{path}: field 'info/indx' has {len(windows)} windows but 'language/ann' has "
                f"{len(texts)} texts and 'language/task' {len(tasks)}"
            )
        if len(windows) and np.any(windows[:, 1] < windows[:, 0]):
            bad = int(np.argmax(windows[:, 1] < windows[:, 0]))
            raise DatasetFormatError(
                f"{path}: field 'info/indx' window {bad} ends before it starts {windows[bad]}"
            )
        return windows, texts, tasks

    def _check_windows_inside_episodes(self) -> None:
        if len(self.windows) == 0:
            return
        starts, ends = self.episodes[:, 0], self.episodes[:, 1]
        pos = np.searchsorted(starts, self.windows[:, 0], side="right") - 1
        ok = (pos >= 0) & (self.windows[:, 1] <= ends[np.clip(pos, 0, None)])
        if not np.all(ok):
            bad = int(np.argmin(ok))
            raise DatasetFormatError(
                f"{self.lang_path}: field 'info/indx' window {bad} {self.windows[bad].tolist()} is not inside "
                f"any recorded episode of {self.root / EP_START_END_PATH}"
            )

    # -- frames ---------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of language windows."""
        return len(self.windows)

    def frame_path(self, frame: int) -> Path:
        return self.root / f"episode_{int(frame):07d}.npz"

    def read_field(self, frame: int, key: str) -> np.ndarray:
        """One field of one frame file; any failure is a :class:`DatasetFormatError`."""
        path = self.frame_path(frame)
        try:
            with np.load(path, allow_pickle=False) as npz:
                if key not in npz.files:
                    raise DatasetFormatError(f"{path}: missing field '{key}' (has {', '.join(npz.files)})")
                return npz[key]
        except DatasetFormatError:
            raise
        except FileNotFoundError as err:
            raise DatasetFormatError(f"{path}: frame file not found (needed for field '{key}')") from err
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError) as err:
            raise DatasetFormatError(f"{path}: cannot read field '{key}': {one_line(err)}") from err

    def frame(self, frame: int) -> np.ndarray:
        """The configured camera image (default ``rgb_static``), uint8 (H, W, 3) as stored."""
        image = self.read_field(frame, self.image_key)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DatasetFormatError(
                f"{self.frame_path(frame)}: field '{self.image_key}' is {image.dtype} {image.shape}, "
                "expected uint8 (H, W, 3)"
            )
        return image

    def rel_actions(self, frame: int) -> np.ndarray:
        """The relative action recorded at ``frame``: float32 (7,)."""
        action = self.read_field(frame, "rel_actions")
        if action.shape != (7,) or not np.issubdtype(action.dtype, np.number):
            raise DatasetFormatError(
                f"{self.frame_path(frame)}: field 'rel_actions' has {action.dtype} shape {action.shape}, "
                "expected (7,)"
            )
        return action.astype(np.float32)

    def read_rel_actions(self, frames: Sequence[int] | np.ndarray, *, num_threads: int = 1) -> np.ndarray:
        """``rel_actions`` of many frames, float32 (len(frames), 7). Threads overlap file I/O."""
        frames = np.asarray(frames, dtype=np.int64)
        out = np.empty((len(frames), 7), dtype=np.float32)
        if num_threads <= 1 or len(frames) < 256:
            for i, f in enumerate(frames):
                out[i] = self.rel_actions(int(f))
            return out

        def work(chunk: np.ndarray) -> None:
            for i in chunk:
                out[i] = self.rel_actions(int(frames[i]))

        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            list(pool.map(work, np.array_split(np.arange(len(frames)), num_threads * 8)))
        return out

    def window_frames(self) -> np.ndarray:
        """Sorted unique frame ids covered by the language windows."""
        if len(self.windows) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([np.arange(s, e + 1) for s, e in self.windows]))

    def __repr__(self) -> str:
        return f"CalvinReader({str(self.root)!r}, windows={len(self.windows)}, image_key={self.image_key!r})"


__all__ = ["CALVIN_IMAGE_KEYS", "EP_START_END_PATH", "LANG_ANN_PATH", "CalvinReader"]

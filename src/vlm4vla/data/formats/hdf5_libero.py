"""LIBERO original HDF5 reader (``libero_10/<TASK>_demo.hdf5``, one file per task).

Layout (``datasets.md``): ``data`` group with the ``problem_info`` JSON attribute (holding
``language_instruction``), and ``data/demo_{i}`` groups with ``actions`` (T, 7) and
``obs/agentview_rgb`` / ``obs/eye_in_hand_rgb`` (T, 128, 128, 3) uint8 stored upside down.

:meth:`LiberoHDF5Reader.frame` returns the image *as stored* (rotated 180°); the LIBERO
datamodule turns it upright. Files are opened lazily, once per process (:class:`~.handles.HandleCache`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader, check_actions, one_line
from vlm4vla.data.formats.handles import HandleCache
from vlm4vla.data.formats.registry import EpisodeFormat, register_format

LIBERO_IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")


def _demo_number(name: str) -> tuple[int, str]:
    match = re.fullmatch(r"demo_(\d+)", name)
    return (int(match.group(1)), name) if match else (1 << 62, name)


def _decode_attr(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.size == 1:
        return _decode_attr(value.reshape(-1)[0])
    return str(value)


def _dataset_names(group: h5py.Group) -> list[str]:
    """Datasets of a demo group, one level of sub-groups deep (``actions``, ``obs/agentview_rgb``)."""
    names = []
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            names.extend(f"{key}/{sub}" for sub, child in item.items() if isinstance(child, h5py.Dataset))
        else:
            names.append(key)
    return sorted(names)


def list_hdf5_files(root: str | Path) -> list[Path]:
    """The ``*.hdf5`` files of a LIBERO suite directory (or ``[root]`` for a single file)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: LIBERO HDF5 directory not found")
    files = sorted(p for p in root.glob("*.hdf5") if p.is_file())
    if not files:
        raise DatasetFormatError(f"{root}: no *.hdf5 files found")
    return files


class LiberoHDF5Reader:
    """:class:`~vlm4vla.data.formats.base.EpisodeReader` over LIBERO HDF5 demo files.

    Episodes are numbered file by file (files sorted by name) and, inside a file, by demo
    number (``demo_0, demo_1, …, demo_10``). ``image_key`` names a dataset under
    ``data/demo_i/obs/``, ``action_key`` one under ``data/demo_i/``.
    """

    #: LIBERO records camera images upside down; datamodules rotate them by 180° to upright.
    stored_rotated_180 = True

    def __init__(self, root: str | Path, *, image_key: str = "agentview_rgb", action_key: str = "actions") -> None:
        self.root = Path(root)
        self.image_key = image_key
        self.action_key = action_key
        self.files = list_hdf5_files(self.root)
        self._instructions: list[str] = []
        # (file position, demo group name, length) per episode
        self._episodes: list[tuple[int, str, int]] = []
        self._handles: HandleCache[int, h5py.File] = HandleCache()  # file position → open file
        for file_pos, path in enumerate(self.files):
            self._scan(file_pos, path)
        self.close()

    # -- indexing ---------------------------------------------------------------------------
    def _scan(self, file_pos: int, path: Path) -> None:
        handle = self._file(file_pos)
        if "data" not in handle:
            raise DatasetFormatError(f"{path}: missing group 'data'")
        data = handle["data"]
        if "problem_info" not in data.attrs:
            raise DatasetFormatError(f"{path}: missing field 'data.attrs[problem_info]'")
        try:
            info = json.loads(_decode_attr(data.attrs["problem_info"]))
            instruction = info["language_instruction"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DatasetFormatError(
                f"{path}: field 'data.attrs[problem_info]' has no JSON 'language_instruction' ({one_line(err)})"
            ) from err
        if isinstance(instruction, (list, tuple)):
            instruction = " ".join(str(w) for w in instruction)
        self._instructions.append(str(instruction).strip())
        demos = sorted((k for k in data if k.startswith("demo")), key=_demo_number)
        if not demos:
            raise DatasetFormatError(f"{path}: group 'data' has no demo_* groups")
        for demo in demos:
            group = data[demo]
            for field in (self.action_key, f"obs/{self.image_key}"):
                if field not in group:
                    raise DatasetFormatError(
                        f"{path}: missing field 'data/{demo}/{field}' (has: {', '.join(_dataset_names(group))})"
                    )
            actions, images = group[self.action_key], group[f"obs/{self.image_key}"]
            if actions.ndim != 2 or actions.shape[1] != 7:
                raise DatasetFormatError(
                    f"{path}: field 'data/{demo}/{self.action_key}' has shape {actions.shape}, expected (T, 7)"
                )
            if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
                raise DatasetFormatError(
                    f"{path}: field 'data/{demo}/obs/{self.image_key}' is {images.dtype} {images.shape}, "
                    "expected uint8 (T, H, W, 3)"
                )
            if images.shape[0] != actions.shape[0]:
                raise DatasetFormatError(
                    f"{path}: field 'data/{demo}/obs/{self.image_key}' has {images.shape[0]} frames but "
                    f"'data/{demo}/{self.action_key}' has {actions.shape[0]}"
                )
            self._episodes.append((file_pos, demo, int(actions.shape[0])))

    def _file(self, file_pos: int) -> h5py.File:
        return self._handles.get(file_pos, self._open)

    def _open(self, file_pos: int) -> h5py.File:
        path = self.files[file_pos]
        try:
            return h5py.File(path, "r")
        except FileNotFoundError as err:
            raise DatasetFormatError(f"{path}: HDF5 file not found") from err
        except OSError as err:
            raise DatasetFormatError(f"{path}: cannot open HDF5 file: {one_line(err)}") from err

    def close(self) -> None:
        """Close the open files of this process (they reopen lazily)."""
        self._handles.close()

    # -- EpisodeReader --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._episodes)

    def _episode(self, episode: int) -> tuple[int, str, int]:
        if not 0 <= episode < len(self._episodes):
            raise IndexError(f"episode {episode} out of range [0, {len(self._episodes)})")
        return self._episodes[episode]

    def episode_length(self, episode: int) -> int:
        return self._episode(episode)[2]

    def instruction(self, episode: int) -> str:
        return self._instructions[self._episode(episode)[0]]

    def episode_source(self, episode: int) -> str:
        file_pos, demo, _ = self._episode(episode)
        return f"{self.files[file_pos]}:data/{demo}"

    def _read(self, episode: int, field: str, index: Any = ()) -> np.ndarray:
        file_pos, demo, _ = self._episode(episode)
        try:
            return self._file(file_pos)["data"][demo][field][index]
        except DatasetFormatError:
            raise
        except (OSError, KeyError, ValueError) as err:
            raise DatasetFormatError(
                f"{self.files[file_pos]}: cannot read field 'data/{demo}/{field}': {one_line(err)}"
            ) from err

    def actions(self, episode: int) -> np.ndarray:
        file_pos, demo, _ = self._episode(episode)
        return check_actions(
            self._read(episode, self.action_key), str(self.files[file_pos]), f"data/{demo}/{self.action_key}"
        )

    def frame(self, episode: int, step: int) -> np.ndarray:
        """``obs/<image_key>[step]`` as stored (upside down), uint8 (H, W, 3)."""
        length = self.episode_length(episode)
        if not 0 <= step < length:
            raise IndexError(f"step {step} out of range [0, {length}) in {self.episode_source(episode)}")
        return self._read(episode, f"obs/{self.image_key}", int(step))

    def __repr__(self) -> str:
        return f"LiberoHDF5Reader({str(self.root)!r}, episodes={len(self)}, image_key={self.image_key!r})"


@register_format("hdf5")
class LiberoHDF5Format(EpisodeFormat):
    """A ``*.hdf5`` file, or a directory of them (one LIBERO suite)."""

    looks_for = "*.hdf5"

    def detect(self, root: Path) -> bool:
        if root.is_file():
            return root.suffix == ".hdf5"
        return root.is_dir() and any(root.glob("*.hdf5"))

    def open(
        self,
        root: Path,
        *,
        split: str = "train",
        image_key: str | None = None,
        action_key: str | None = None,
        instruction_key: str | None = None,
    ) -> EpisodeReader:
        return LiberoHDF5Reader(root, image_key=image_key or "agentview_rgb", action_key=action_key or "actions")


__all__ = ["LIBERO_IMAGE_KEYS", "LiberoHDF5Format", "LiberoHDF5Reader", "list_hdf5_files"]

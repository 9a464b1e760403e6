"""LeRobot dataset reader, format v3.0 and v2.1 (v2.0 has the v2.1 layout).

Metadata (``meta/``, and its checks against the data) is parsed by :mod:`.lerobot_meta`,
mp4 frames are decoded by :mod:`.lerobot_video`. Images are either embedded in the data parquet
(``struct{bytes: PNG, path}``, feature dtype ``"image"``) or stored as mp4 video (dtype ``"video"``).

Reading is lazy and per process (:class:`~.handles.HandleCache`): parquet files are
memory-mapped and read by row group and column (actions, task and timestamp columns of one
episode); images are streamed in small record batches from the row group holding the frame, so
a frame never loads its episode's other images; an open video container stays cached, so a
later frame of the same file continues decoding without seeking.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader, check_actions, decode_image, one_line
from vlm4vla.data.formats.handles import HandleCache
from vlm4vla.data.formats.lerobot_meta import (
    PRIMARY_IMAGE_KEYS,
    SUPPORTED_VERSIONS,
    EpisodeMeta,
    LeRobotMetadata,
    open_parquet,
)
from vlm4vla.data.formats.lerobot_video import VideoStream, to_rgb
from vlm4vla.data.formats.registry import EpisodeFormat, register_format

_BATCH_ROWS = 8  # rows of embedded images decoded at a time
_MAX_OPEN_FILES = 8  # parquet files / video containers kept open per process
_MAX_CACHED_EPISODES = 16  # per-episode numeric columns kept per process
STATE_KEY = "observation.state"


def _list_to_numpy(column: pa.ChunkedArray | pa.Array, path: Path, field: str) -> np.ndarray:
    """A list / fixed-size-list column of numbers as a (rows, width) array in its stored dtype."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(array)
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
        return array.to_numpy(zero_copy_only=False).reshape(rows, 1)
    if not (
        pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type)
    ):
        raise DatasetFormatError(f"{path}: field '{field}' has type {array.type}, expected a list of numbers")
    if array.null_count:
        raise DatasetFormatError(f"{path}: field '{field}' has {array.null_count} null rows")
    lengths = pc.unique(pc.list_value_length(array)).to_pylist() if rows else [0]
    if len(lengths) != 1:
        raise DatasetFormatError(f"{path}: field '{field}' has rows of different lengths {sorted(lengths)}")
    return array.flatten().to_numpy(zero_copy_only=False).reshape(rows, lengths[0])


class _RowGroupStream:
    """One column of one row group of a data file, read forward in small record batches."""

    def __init__(self, path: Path, group: int, first_row: int, column: str) -> None:
        self.path, self.group, self.first_row, self.column = path, group, first_row, column
        self._handle: pq.ParquetFile | None = None  # the open file the batches come from
        self._batches: Iterator[pa.RecordBatch] | None = None
        self._start = first_row  # file row of the current batch's first row
        self._batch: pa.RecordBatch | None = None

    def value(self, handle: pq.ParquetFile, row: int) -> Any:
        """The column's value at file row ``row``: continues from the current batch when the row is
        in it or ahead of it (sequential access), else restarts the row group (rows behind the
        current batch's first row need a restart too: lerobot writes one row group per episode
        or per file), as it does when the file was reopened since."""
        if self._batches is None or row < self._start or handle is not self._handle:
            self._handle = handle
            self._batches = handle.iter_batches(batch_size=_BATCH_ROWS, row_groups=[self.group], columns=[self.column])
            self._start, self._batch = self.first_row, None
        while self._batch is None or row >= self._start + self._batch.num_rows:
            if self._batch is not None:
                self._start += self._batch.num_rows
            try:
                self._batch = next(self._batches)
            except StopIteration as err:
                self._batches = None
                raise DatasetFormatError(f"{self.path}: row {row} missing from field '{self.column}'") from err
            except (OSError, pa.ArrowException) as err:
                self._batches = None
                raise DatasetFormatError(f"{self.path}: cannot read field '{self.column}' ({one_line(err)})") from err
        return self._batch.column(0)[row - self._start].as_py()


class LeRobotReader:
    """:class:`~vlm4vla.data.formats.base.EpisodeReader` over a LeRobot v3.0 / v2.1 dataset.

    Args:
        root: the dataset directory (holding ``meta/info.json``).
        image_key: the primary camera feature (``observation.images.image``, ``image``, ...).
            ``None`` picks the first of :data:`PRIMARY_IMAGE_KEYS` present, else the first
            image/video feature of ``info.json`` that is not a wrist or depth camera.
        episodes: the dataset ``episode_index`` values to expose, in this order (default: all,
            sorted). Reader episode ``i`` is dataset episode ``episodes[i]``.
        action_key: the action feature (``action``; openpi's LIBERO port: ``actions``).
        stored_rotated_180: whether frames are stored upside down relative to the upright view
            (LIBERO HDF5 convention). Hub LIBERO ports derive from the upright RLDS conversion,
            hence the default ``False``; override for ports made from the raw HDF5 files.
        video_tolerance_s: how far a decoded video frame's time may be from the requested
            timestamp (default: half a frame period).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        image_key: str | None = None,
        episodes: Sequence[int] | None = None,
        action_key: str = "action",
        stored_rotated_180: bool = False,
        video_tolerance_s: float | None = None,
    ) -> None:
        self.root = Path(root)
        self.action_key = action_key
        self.stored_rotated_180 = stored_rotated_180
        if not self.root.is_dir():
            raise DatasetFormatError(f"{self.root}: LeRobot dataset directory not found")
        self.metadata = meta = LeRobotMetadata(self.root, image_key=image_key, action_key=action_key)
        self.info, self.version, self.features, self.fps = meta.info, meta.version, meta.features, meta.fps
        self.image_key, self.is_video, self.tasks = meta.image_key, meta.is_video, meta.tasks
        self.video_tolerance_s = video_tolerance_s if video_tolerance_s is not None else 0.5 / self.fps
        if episodes is None:
            selected = sorted(self.metadata.episodes)
        else:
            selected = [int(e) for e in episodes]
            missing = [e for e in selected if e not in self.metadata.episodes]
            if missing:
                raise DatasetFormatError(
                    f"{self.root / self.metadata.episodes_path}: no episode_index {missing[0]} (asked in episodes=)"
                )
        self._episodes = [self.metadata.episodes[e] for e in selected]
        self.episode_indices = tuple(selected)
        self.metadata.check_totals()
        self._parquets: HandleCache[Path, pq.ParquetFile] = HandleCache(_MAX_OPEN_FILES)
        self._videos: HandleCache[Path, VideoStream] = HandleCache(_MAX_OPEN_FILES)
        self._columns: HandleCache[int, dict[str, np.ndarray]] = HandleCache(_MAX_CACHED_EPISODES, close=None)
        self._streams: HandleCache[tuple[Path, int], _RowGroupStream] = HandleCache(1, close=None)

    # -- per-process handles ----------------------------------------------------------------------
    def _parquet(self, path: Path) -> pq.ParquetFile:
        return self._parquets.get(path, self._open_parquet)

    def _open_parquet(self, path: Path) -> pq.ParquetFile:
        handle = open_parquet(path)
        try:
            self.metadata.check_data_file(path, handle)
        except DatasetFormatError:
            handle.close()
            raise
        return handle

    def close(self) -> None:
        """Release this process's open parquet files and video containers (they reopen lazily)."""
        for cache in (self._streams, self._columns, self._parquets, self._videos):
            cache.close()

    # -- data access -------------------------------------------------------------------------------
    def _episode(self, episode: int) -> EpisodeMeta:
        if not 0 <= episode < len(self._episodes):
            raise IndexError(f"episode {episode} out of range [0, {len(self._episodes)})")
        return self._episodes[episode]

    def episode_source(self, episode: int) -> str:
        meta = self._episode(episode)
        return f"{meta.data_path} episode_index={meta.index}"

    def _row_groups(self, handle: pq.ParquetFile, path: Path, start: int, stop: int) -> tuple[list[int], int]:
        """Row groups covering rows [start, stop) and the first row of the first of them."""
        groups, first, offset = [], 0, 0
        for group in range(handle.metadata.num_row_groups):
            rows = handle.metadata.row_group(group).num_rows
            if offset < stop and offset + rows > start:
                if not groups:
                    first = offset
                groups.append(group)
            offset += rows
        if stop > offset:
            raise DatasetFormatError(f"{path}: rows [{start}, {stop}) asked but the file has {offset} rows")
        return groups, first

    def _numeric_columns(self, episode: int) -> dict[str, np.ndarray]:
        """``action`` (stored dtype), ``task_index`` and ``timestamp`` of an episode's rows."""
        return self._columns.get(episode, self._read_numeric_columns)

    def _read_numeric_columns(self, episode: int) -> dict[str, np.ndarray]:
        meta = self._episode(episode)
        handle = self._parquet(meta.data_path)  # checked: holds the action column
        names = handle.schema_arrow.names
        columns = [c for c in (self.action_key, "task_index", "timestamp", "episode_index") if c in names]
        start, stop = meta.row_start, meta.row_start + meta.length
        groups, first = self._row_groups(handle, meta.data_path, start, stop)
        try:
            table = handle.read_row_groups(groups, columns=columns).slice(start - first, meta.length)
        except (OSError, pa.ArrowException) as err:
            raise DatasetFormatError(
                f"{meta.data_path}: cannot read field '{self.action_key}' ({one_line(err)})"
            ) from err
        if "episode_index" in columns:
            stored = pc.unique(table.column("episode_index")).to_pylist()
            if stored != [meta.index]:
                raise DatasetFormatError(
                    f"{meta.data_path}: field 'episode_index' of rows [{start}, {stop}) is {stored}, expected {meta.index}"
                )
        result = {"action": _list_to_numpy(table.column(self.action_key), meta.data_path, self.action_key)}
        if "task_index" in columns:
            result["task_index"] = table.column("task_index").to_numpy(zero_copy_only=False)
        if "timestamp" in columns:
            result["timestamp"] = _list_to_numpy(table.column("timestamp"), meta.data_path, "timestamp").reshape(-1)
        return result

    # -- EpisodeReader -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._episodes)

    def episode_length(self, episode: int) -> int:
        return self._episode(episode).length

    def instruction(self, episode: int) -> str:
        """The task of the episode's first frame (``task_index`` → tasks table)."""
        meta = self._episode(episode)
        task_index = self._numeric_columns(episode).get("task_index")
        if task_index is None or len(task_index) == 0:
            if not meta.tasks:
                raise DatasetFormatError(
                    f"{meta.data_path}: missing field 'task_index' and no 'tasks' in the episodes metadata"
                )
            return meta.tasks[0]
        first = int(task_index[0])
        if first not in self.tasks:
            raise DatasetFormatError(
                f"{self.metadata.tasks_path}: no task_index {first} (used by {self.episode_source(episode)})"
            )
        return self.tasks[first]

    def actions(self, episode: int) -> np.ndarray:
        return check_actions(self._numeric_columns(episode)["action"], self.episode_source(episode), self.action_key)

    def states(self, episode: int, key: str | None = None) -> np.ndarray:
        """The observation states (default ``observation.state``) as float32 (T, D)."""
        key = key or STATE_KEY
        meta = self._episode(episode)
        handle = self._parquet(meta.data_path)
        names = handle.schema_arrow.names
        if key not in names:
            raise DatasetFormatError(f"{meta.data_path}: missing field '{key}' (has: {', '.join(names)})")
        start, stop = meta.row_start, meta.row_start + meta.length
        groups, first = self._row_groups(handle, meta.data_path, start, stop)
        try:
            column = handle.read_row_groups(groups, columns=[key]).slice(start - first, meta.length).column(key)
        except (OSError, pa.ArrowException) as err:
            raise DatasetFormatError(f"{meta.data_path}: cannot read field '{key}' ({one_line(err)})") from err
        values = _list_to_numpy(column, meta.data_path, key)
        if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
            raise DatasetFormatError(f"{meta.data_path}: field '{key}' has dtype {values.dtype}, expected numbers")
        return values.astype(np.float32)

    def frame(self, episode: int, step: int) -> np.ndarray:
        """``image_key`` at ``step`` as uint8 (H, W, 3), as stored."""
        meta = self._episode(episode)
        if not 0 <= step < meta.length:
            raise IndexError(f"step {step} out of range [0, {meta.length}) in {self.episode_source(episode)}")
        if self.is_video:
            return self._video_frame(episode, step)
        return self._embedded_frame(meta, meta.row_start + step)

    def _embedded_frame(self, meta: EpisodeMeta, row: int) -> np.ndarray:
        path = meta.data_path
        handle = self._parquet(path)
        if self.image_key not in handle.schema_arrow.names:
            raise DatasetFormatError(f"{path}: missing field '{self.image_key}'")
        groups, group_start = self._row_groups(handle, path, row, row + 1)
        stream = self._streams.get((path, groups[0]), lambda key: _RowGroupStream(*key, group_start, self.image_key))
        value = stream.value(handle, row)
        data = value.get("bytes") if isinstance(value, dict) else value
        if not data:
            raise DatasetFormatError(f"{path}: field '{self.image_key}' row {row} has no image bytes")
        array = decode_image(data, f"{path}: field '{self.image_key}' row {row}")
        return self.metadata.check_image_shape(array, f"{path} row {row}")

    def _video_frame(self, episode: int, step: int) -> np.ndarray:
        meta = self._episode(episode)
        timestamps = self._numeric_columns(episode).get("timestamp")
        offset = float(timestamps[step]) if timestamps is not None else step / self.fps
        target = meta.video_from_ts + offset
        video = self._videos.get(meta.video_path, VideoStream)
        time, frame = video.nearest(target, self.video_tolerance_s)
        if abs(time - target) > self.video_tolerance_s:
            raise DatasetFormatError(
                f"{video.path}: no frame of '{self.image_key}' at {target:.4f}s (closest decoded {time:.4f}s, "
                f"episode_index={meta.index} step {step})"
            )
        return self.metadata.check_image_shape(to_rgb(frame), f"{video.path} at {target:.4f}s")

    def __repr__(self) -> str:
        storage = "video" if self.is_video else "embedded"
        return (
            f"LeRobotReader({str(self.root)!r}, version={self.version!r}, episodes={len(self)}, "
            f"image_key={self.image_key!r} ({storage}))"
        )


@register_format("lerobot")
class LeRobotFormat(EpisodeFormat):
    """A LeRobot dataset root (``meta/info.json``)."""

    looks_for = "meta/info.json"

    def detect(self, root: Path) -> bool:
        return (root / "meta" / "info.json").is_file()

    def open(
        self,
        root: Path,
        *,
        split: str = "train",
        image_key: str | None = None,
        action_key: str | None = None,
        instruction_key: str | None = None,
    ) -> EpisodeReader:
        return LeRobotReader(root, image_key=image_key, action_key=action_key or "action")


__all__ = ["PRIMARY_IMAGE_KEYS", "STATE_KEY", "SUPPORTED_VERSIONS", "LeRobotFormat", "LeRobotReader"]

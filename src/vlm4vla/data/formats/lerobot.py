"""LeRobot dataset reader, format v3.0 and v2.1 (v2.0 has the v2.1 layout).

v3.0 (``codebase_version`` ``"v3.0"``): several episodes per file.
  ``meta/info.json`` (``fps``, ``features``, ``data_path`` / ``video_path`` templates),
  ``meta/tasks.parquet`` (task string + ``task_index``), ``meta/episodes/chunk-*/file-*.parquet``
  (``episode_index``, ``length``, ``data/{chunk,file}_index``, ``dataset_{from,to}_index``,
  ``videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}``),
  ``data/chunk-{c:03d}/file-{f:03d}.parquet`` and ``videos/<key>/chunk-{c:03d}/file-{f:03d}.mp4``.
v2.1: one file per episode.
  ``meta/{episodes,tasks,episodes_stats}.jsonl``, ``data/chunk-{c:03d}/episode_{e:06d}.parquet``,
  ``videos/chunk-{c:03d}/<key>/episode_{e:06d}.mp4``.

Images are either embedded in the data parquet (``struct{bytes: PNG, path}``, feature dtype
``"image"``) or stored as mp4 video (dtype ``"video"``, AV1/H.264), decoded with PyAV.

``meta/info.json`` is checked against the files when the reader opens (``total_episodes`` /
``total_frames`` against the episodes metadata, each v3.0 data file's row count and schema
against it from the parquet footer) and when a file is first opened (v2.x: the episode's row
count; the action column's type against ``features.<action>.dtype``) or a frame decoded (its
size against ``features.<image>.shape``): a lie is one error naming the file and the field.

Reading is lazy and per process: parquet files are memory-mapped and read by row group and
column (actions, task and timestamp columns of one episode); images are streamed in small
record batches from the row group holding the frame, so a frame never loads its episode's
other images; a video is seeked to the frame's timestamp and decoded forward from the
preceding key frame, and the open container stays cached (a later frame of the same file
continues decoding without seeking). Handles are dropped when the reader is pickled into a
DataLoader worker and reopened there on first use.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from vlm4vla.data.formats.base import DatasetFormatError, check_actions

#: Primary third-person camera names used by Hub ports, in order of preference.
PRIMARY_IMAGE_KEYS = (
    "observation.images.image",  # LIBERO ports
    "observation.images.agentview",
    "observation.images.agentview_image",
    "observation.images.agentview_rgb",
    "image",  # flat Hub ports (``image``, ``image2``, ...)
    "observation.image",
    "observation.images.image_0",  # Bridge ports
    "observation.images.front",
    "observation.images.top",
    "observation.images.cam_high",
)
SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
_IMAGE_DTYPES = ("image", "video")
_BATCH_ROWS = 8  # rows of embedded images decoded at a time
_MAX_OPEN_FILES = 8  # parquet files / video containers kept open per process
_MAX_CACHED_EPISODES = 16  # per-episode numeric columns kept per process


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{path}: {what} not found") from err
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"{path}: cannot read {what} ({_one_line(err)})") from err


def _read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{path}: {what} not found") from err
    except OSError as err:
        raise DatasetFormatError(f"{path}: cannot read {what} ({_one_line(err)})") from err
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetFormatError(f"{path}: line {number} is not JSON ({_one_line(err)})") from err
    return rows


def _read_parquet(path: Path, columns: Sequence[str] | None, what: str) -> pa.Table:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: {what} not found")
    try:
        schema = pq.read_schema(path)
        if columns is not None:
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise DatasetFormatError(f"{path}: missing field '{missing[0]}'")
        return pq.read_table(path, columns=list(columns) if columns is not None else None, memory_map=True)
    except DatasetFormatError:
        raise
    except (OSError, pa.ArrowException) as err:
        raise DatasetFormatError(f"{path}: cannot read {what} ({_one_line(err)})") from err


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


def _numeric_kind(dtype: object) -> str | None:
    """``"f"`` (float), ``"i"`` (signed/unsigned int) or None for a dtype name (``float32``,
    arrow's ``double``, ``int64``, ...)."""
    name = str(dtype).lower()
    if name in ("double", "float", "halffloat") or name.startswith("float"):
        return "f"
    if name.startswith(("int", "uint")):
        return "i"
    return None


def _value_type(arrow_type: pa.DataType) -> pa.DataType | None:
    """The number type of a numeric or list-of-numbers column, else None."""
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return arrow_type
    return None


def _to_rgb(frame: Any) -> np.ndarray:
    """A decoded ``av.VideoFrame`` as uint8 (H, W, 3), converted on this thread only (as for the
    decoder: a scaler with a thread pool, kept by PyAV, hangs when freed in a forked child)."""
    try:
        return frame.to_ndarray(format="rgb24", threads=1)
    except TypeError:  # PyAV < 14 has no ``threads`` (and its scaler is single-threaded)
        return frame.to_ndarray(format="rgb24")


@dataclass(frozen=True)
class _Episode:
    index: int  # the dataset's ``episode_index``
    length: int
    data_path: Path
    row_start: int  # first row of the episode in ``data_path``
    video_path: Path | None  # mp4 of the primary camera, if stored as video
    video_from_ts: float  # timestamp of the episode's first frame in ``video_path``
    tasks: tuple[str, ...]  # from the episodes metadata (fallback when there is no task_index)


class _VideoState:
    """An open container and where its decoder currently is."""

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        try:
            self.container = av.open(str(path))
        except FileNotFoundError as err:
            raise DatasetFormatError(f"{path}: video file not found") from err
        except av.FFmpegError as err:
            raise DatasetFormatError(f"{path}: cannot open video ({_one_line(err)})") from err
        if not self.container.streams.video:
            self.container.close()
            raise DatasetFormatError(f"{path}: no video stream")
        self.stream = self.container.streams.video[0]
        # One decoding thread: parallelism comes from DataLoader workers, and a decoder without
        # a thread pool can be freed safely in a forked child (freeing one with slice/frame
        # threads there waits forever for threads that were not forked).
        self.stream.codec_context.thread_count = 1
        self.frames: Iterator[Any] | None = None
        self.current: tuple[float, Any] | None = None  # (time, av.VideoFrame) last decoded

    def close(self) -> None:
        self.frames = None
        self.current = None
        self.container.close()


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
        self._info_path = self.root / "meta" / "info.json"
        if not self.root.is_dir():
            raise DatasetFormatError(f"{self.root}: LeRobot dataset directory not found")
        self.info: dict[str, Any] = _read_json(self._info_path, "info.json")
        self.version: str = str(self.info.get("codebase_version", ""))
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetFormatError(
                f"{self._info_path}: field 'codebase_version' is {self.version!r}, "
                f"supported: {', '.join(SUPPORTED_VERSIONS)}"
            )
        self.features: dict[str, Any] = self._info_field("features", dict)
        self.fps = float(self._info_field("fps", (int, float)))
        self._data_template: str = self._info_field("data_path", str)
        self._check_action_feature()
        self.image_key = self._resolve_image_key(image_key)
        self.is_video = self.features[self.image_key].get("dtype") == "video"
        self._video_template: str | None = self._info_field("video_path", str) if self.is_video else None
        self.video_tolerance_s = video_tolerance_s if video_tolerance_s is not None else 0.5 / self.fps
        self.tasks, self._tasks_path = self._load_tasks()
        all_episodes = self._load_episodes_v3() if self.version == "v3.0" else self._load_episodes_v2()
        if episodes is None:
            selected = sorted(all_episodes)
        else:
            selected = [int(e) for e in episodes]
            missing = [e for e in selected if e not in all_episodes]
            if missing:
                meta = "meta/episodes/" if self.version == "v3.0" else "meta/episodes.jsonl"
                raise DatasetFormatError(f"{self.root / meta}: no episode_index {missing[0]} (asked in episodes=)")
        self._episodes = [all_episodes[e] for e in selected]
        self.episode_indices = tuple(selected)
        self._image_hw = self._declared_image_hw()
        # Rows each data file must hold: the lengths of its episodes in the metadata.
        self._file_rows: dict[Path, int] = {}
        for meta in all_episodes.values():
            self._file_rows[meta.data_path] = self._file_rows.get(meta.data_path, 0) + meta.length
        self._checked_files: set[Path] = set()
        self._check_totals(all_episodes)
        self._pid = os.getpid()
        self._parquets: OrderedDict[Path, pq.ParquetFile] = OrderedDict()
        self._videos: OrderedDict[Path, _VideoState] = OrderedDict()
        self._columns: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        # (file, row group, batch iterator, first row of the current batch, current batch)
        self._batch: tuple[Path, int, Iterator[pa.RecordBatch], int, pa.RecordBatch | None] | None = None

    # -- metadata --------------------------------------------------------------------------------
    def _info_field(self, name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in self.info:
            raise DatasetFormatError(f"{self._info_path}: missing field '{name}'")
        value = self.info[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DatasetFormatError(f"{self._info_path}: field '{name}' has type {type(value).__name__}")
        return value

    def _check_action_feature(self) -> None:
        feature = self.features.get(self.action_key)
        if not isinstance(feature, dict):
            numeric = [k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") not in _IMAGE_DTYPES]
            raise DatasetFormatError(
                f"{self._info_path}: missing field 'features.{self.action_key}' "
                f"(non-image features: {', '.join(numeric) or 'none'}; choose one with action_key)"
            )
        shape = feature.get("shape")
        if not isinstance(shape, list) or math.prod(shape) != 7:
            raise DatasetFormatError(
                f"{self._info_path}: field 'features.{self.action_key}.shape' is {shape}, expected [7]"
            )
        if _numeric_kind(feature.get("dtype")) is None:
            raise DatasetFormatError(
                f"{self._info_path}: field 'features.{self.action_key}.dtype' is {feature.get('dtype')!r}, "
                "expected a float or int type"
            )

    def _declared_image_hw(self) -> tuple[int, int] | None:
        """(height, width) of ``features.<image_key>.shape``, by its ``names`` when given
        (ports write [H, W, C] and [C, H, W]), else by where the channel axis is."""
        feature = self.features[self.image_key]
        shape, names = feature.get("shape"), feature.get("names")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) for d in shape)):
            return None
        if isinstance(names, list) and len(names) == 3 and all(isinstance(n, str) for n in names):
            axes = {n.lower().rstrip("s"): d for n, d in zip(names, shape, strict=True)}
            if "height" in axes and "width" in axes:
                return axes["height"], axes["width"]
        if shape[2] in (1, 3, 4):
            return shape[0], shape[1]
        if shape[0] in (1, 3, 4):
            return shape[1], shape[2]
        return None

    def _check_totals(self, episodes: dict[int, _Episode]) -> None:
        """``total_episodes`` / ``total_frames`` of info.json against the episodes metadata, and
        (v3.0: few large files) every data file against both, from its footer only."""
        frames = sum(meta.length for meta in episodes.values())
        for field, actual in (("total_episodes", len(episodes)), ("total_frames", frames)):
            declared = self.info.get(field)
            if isinstance(declared, int) and not isinstance(declared, bool) and declared != actual:
                meta = "meta/episodes/" if self.version == "v3.0" else "meta/episodes.jsonl"
                raise DatasetFormatError(
                    f"{self._info_path}: field '{field}' is {declared} but {meta} lists {actual}"
                )
        if self.version == "v3.0":
            for path in self._file_rows:
                if not path.is_file():
                    raise DatasetFormatError(f"{path}: data file not found")
                try:
                    handle = pq.ParquetFile(path, memory_map=True)
                except (OSError, pa.ArrowException) as err:
                    raise DatasetFormatError(f"{path}: cannot open parquet file ({_one_line(err)})") from err
                try:
                    self._check_data_file(path, handle)
                finally:
                    handle.close()

    def _check_data_file(self, path: Path, handle: pq.ParquetFile) -> None:
        """Row count and action type of a data file against the metadata (footer only)."""
        if path in self._checked_files:
            return
        schema = handle.schema_arrow
        if self.action_key not in schema.names:
            raise DatasetFormatError(
                f"{path}: missing field '{self.action_key}' (columns: {', '.join(schema.names)})"
            )
        stored = _value_type(schema.field(self.action_key).type)
        declared = self.features[self.action_key].get("dtype")
        # float32 vs float64 is harmless (cast on read); int vs float means info.json is wrong.
        if stored is None or _numeric_kind(str(stored)) != _numeric_kind(declared):
            raise DatasetFormatError(
                f"{self._info_path}: field 'features.{self.action_key}.dtype' is {declared!r} but {path} "
                f"stores {schema.field(self.action_key).type}"
            )
        expected = self._file_rows.get(path)
        rows = handle.metadata.num_rows
        if expected is not None and rows != expected:
            meta = "meta/episodes/" if self.version == "v3.0" else "meta/episodes.jsonl"
            raise DatasetFormatError(
                f"{path}: holds {rows} rows but {meta} field 'length' gives its episodes {expected}"
            )
        self._checked_files.add(path)

    def _check_image_shape(self, image: np.ndarray, where: str) -> np.ndarray:
        if self._image_hw is not None and image.shape[:2] != self._image_hw:
            raise DatasetFormatError(
                f"{self._info_path}: field 'features.{self.image_key}.shape' is "
                f"{self.features[self.image_key].get('shape')} but {where} decodes to {tuple(image.shape)}"
            )
        return image

    def _resolve_image_key(self, image_key: str | None) -> str:
        cameras = [k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") in _IMAGE_DTYPES]
        if image_key is not None:
            if image_key not in self.features:
                raise DatasetFormatError(
                    f"{self._info_path}: missing field 'features.{image_key}' (cameras: {', '.join(cameras) or 'none'})"
                )
            if image_key not in cameras:
                raise DatasetFormatError(
                    f"{self._info_path}: field 'features.{image_key}.dtype' is "
                    f"{self.features[image_key].get('dtype')!r}, expected 'image' or 'video'"
                )
            return image_key
        for key in PRIMARY_IMAGE_KEYS:
            if key in cameras:
                return key
        third_person = [k for k in cameras if "wrist" not in k and "depth" not in k and "hand" not in k]
        if third_person or cameras:
            return (third_person or cameras)[0]
        raise DatasetFormatError(f"{self._info_path}: field 'features' has no image or video feature")

    def _load_tasks(self) -> tuple[dict[int, str], Path]:
        if self.version == "v3.0":
            path = self.root / "meta" / "tasks.parquet"
            table = _read_parquet(path, None, "tasks.parquet")
            names = table.column_names
            text = next((c for c in ("task", "__index_level_0__") if c in names), None)
            if "task_index" not in names:
                raise DatasetFormatError(f"{path}: missing field 'task_index'")
            if text is None:
                raise DatasetFormatError(f"{path}: missing field 'task' (the task string index)")
            indices, texts = table.column("task_index").to_pylist(), table.column(text).to_pylist()
        else:
            path = self.root / "meta" / "tasks.jsonl"
            rows = _read_jsonl(path, "tasks.jsonl")
            for number, row in enumerate(rows, 1):
                for field in ("task_index", "task"):
                    if field not in row:
                        raise DatasetFormatError(f"{path}: line {number} is missing field '{field}'")
            indices, texts = [r["task_index"] for r in rows], [r["task"] for r in rows]
        return {int(i): str(t) for i, t in zip(indices, texts, strict=True)}, path

    def _format_path(self, template: str, field: str, **values: Any) -> Path:
        try:
            return self.root / template.format(**values)
        except (KeyError, IndexError, ValueError) as err:
            raise DatasetFormatError(
                f"{self._info_path}: field '{field}' template {template!r} ({_one_line(err)})"
            ) from err

    def _load_episodes_v3(self) -> dict[int, _Episode]:
        directory = self.root / "meta" / "episodes"
        files = sorted(directory.glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetFormatError(f"{directory}: no episodes metadata (chunk-*/file-*.parquet)")
        columns = [
            "episode_index",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
        ]
        video_columns = [f"videos/{self.image_key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
        rows: list[dict[str, Any]] = []
        for path in files:
            names = pq.read_schema(path).names if path.is_file() else []
            wanted = columns + (video_columns if self.is_video else []) + (["tasks"] if "tasks" in names else [])
            table = _read_parquet(path, wanted, "episodes metadata")
            rows.extend(table.to_pylist())
        # A data file's first row has the smallest global index of the episodes it holds.
        file_start: dict[tuple[int, int], int] = {}
        for row in rows:
            key = (row["data/chunk_index"], row["data/file_index"])
            file_start[key] = min(file_start.get(key, row["dataset_from_index"]), row["dataset_from_index"])
        episodes = {}
        for row in rows:
            index, length = int(row["episode_index"]), int(row["length"])
            if row["dataset_to_index"] - row["dataset_from_index"] != length:
                raise DatasetFormatError(
                    f"{directory}: episode {index} has 'dataset_to_index' - 'dataset_from_index' = "
                    f"{row['dataset_to_index'] - row['dataset_from_index']} but 'length' = {length}"
                )
            chunk, file = int(row["data/chunk_index"]), int(row["data/file_index"])
            data_path = self._format_path(self._data_template, "data_path", chunk_index=chunk, file_index=file)
            video_path, from_ts = None, 0.0
            if self.is_video:
                prefix = f"videos/{self.image_key}/"
                video_path = self._format_path(
                    self._video_template,
                    "video_path",
                    video_key=self.image_key,
                    chunk_index=int(row[prefix + "chunk_index"]),
                    file_index=int(row[prefix + "file_index"]),
                )
                from_ts = float(row[prefix + "from_timestamp"])
            tasks = tuple(str(t) for t in (row.get("tasks") or ()))
            episodes[index] = _Episode(
                index,
                length,
                data_path,
                int(row["dataset_from_index"] - file_start[(chunk, file)]),
                video_path,
                from_ts,
                tasks,
            )
        return episodes

    def _load_episodes_v2(self) -> dict[int, _Episode]:
        path = self.root / "meta" / "episodes.jsonl"
        chunks_size = int(self.info.get("chunks_size", 1000))
        episodes = {}
        for number, row in enumerate(_read_jsonl(path, "episodes.jsonl"), 1):
            for field in ("episode_index", "length"):
                if field not in row:
                    raise DatasetFormatError(f"{path}: line {number} is missing field '{field}'")
            index = int(row["episode_index"])
            values = {"episode_chunk": index // chunks_size, "episode_index": index}
            data_path = self._format_path(self._data_template, "data_path", **values)
            video_path = (
                self._format_path(self._video_template, "video_path", video_key=self.image_key, **values)
                if self.is_video
                else None
            )
            tasks = tuple(str(t) for t in row.get("tasks") or ())
            episodes[index] = _Episode(index, int(row["length"]), data_path, 0, video_path, 0.0, tasks)
        return episodes

    # -- per-process handles ----------------------------------------------------------------------
    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked (DataLoader worker): the parent's handles are not ours
            self._parquets = OrderedDict()
            self._videos = OrderedDict()
            self._columns = OrderedDict()
            self._batch = None
            self._pid = os.getpid()

    def _parquet(self, path: Path) -> pq.ParquetFile:
        self._check_process()
        handle = self._parquets.get(path)
        if handle is not None:
            self._parquets.move_to_end(path)
            return handle
        if not path.is_file():
            raise DatasetFormatError(f"{path}: data file not found")
        try:
            handle = pq.ParquetFile(path, memory_map=True)
        except (OSError, pa.ArrowException) as err:
            raise DatasetFormatError(f"{path}: cannot open parquet file ({_one_line(err)})") from err
        try:
            self._check_data_file(path, handle)
        except DatasetFormatError:
            handle.close()
            raise
        self._parquets[path] = handle
        while len(self._parquets) > _MAX_OPEN_FILES:
            self._parquets.popitem(last=False)[1].close()
        return handle

    def _video(self, path: Path) -> _VideoState:
        self._check_process()
        state = self._videos.get(path)
        if state is not None:
            self._videos.move_to_end(path)
            return state
        state = _VideoState(path)
        self._videos[path] = state
        while len(self._videos) > _MAX_OPEN_FILES:
            self._videos.popitem(last=False)[1].close()
        return state

    def close(self) -> None:
        """Release this process's open parquet files and video containers (they reopen lazily)."""
        if self._pid == os.getpid():
            for handle in self._parquets.values():
                handle.close()
            for state in self._videos.values():
                state.close()
        self._parquets = OrderedDict()
        self._videos = OrderedDict()
        self._columns = OrderedDict()
        self._batch = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_parquets=OrderedDict(), _videos=OrderedDict(), _columns=OrderedDict(), _batch=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    # -- data access -------------------------------------------------------------------------------
    def _episode(self, episode: int) -> _Episode:
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
        self._check_process()
        cached = self._columns.get(episode)
        if cached is not None:
            self._columns.move_to_end(episode)
            return cached
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
                f"{meta.data_path}: cannot read field '{self.action_key}' ({_one_line(err)})"
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
        self._columns[episode] = result
        while len(self._columns) > _MAX_CACHED_EPISODES:
            self._columns.popitem(last=False)
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
                f"{self._tasks_path}: no task_index {first} (used by {self.episode_source(episode)})"
            )
        return self.tasks[first]

    def actions(self, episode: int) -> np.ndarray:
        return check_actions(self._numeric_columns(episode)["action"], self.episode_source(episode), self.action_key)

    def frame(self, episode: int, step: int) -> np.ndarray:
        """``image_key`` at ``step`` as uint8 (H, W, 3), as stored."""
        meta = self._episode(episode)
        if not 0 <= step < meta.length:
            raise IndexError(f"step {step} out of range [0, {meta.length}) in {self.episode_source(episode)}")
        if self.is_video:
            return self._video_frame(episode, step)
        return self._embedded_frame(meta, meta.row_start + step)

    def _embedded_frame(self, meta: _Episode, row: int) -> np.ndarray:
        path = meta.data_path
        handle = self._parquet(path)
        if self.image_key not in handle.schema_arrow.names:
            raise DatasetFormatError(f"{path}: missing field '{self.image_key}'")
        groups, group_start = self._row_groups(handle, path, row, row + 1)
        group = groups[0]
        # Stream the row group in small batches; keep going from the current batch when the
        # requested row is in it or ahead of it (sequential access), else restart the row group.
        # The test is against the current batch's first row: rows behind it in the same row
        # group (lerobot writes one row group per episode or per file) need a restart too.
        if self._batch is None or self._batch[:2] != (path, group) or row < self._batch[3]:
            batches = handle.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], columns=[self.image_key])
            self._batch = (path, group, batches, group_start, None)
        _, _, batches, batch_start, batch = self._batch
        while batch is None or row >= batch_start + batch.num_rows:
            if batch is not None:
                batch_start += batch.num_rows
            try:
                batch = next(batches)
            except StopIteration as err:
                self._batch = None
                raise DatasetFormatError(f"{path}: row {row} missing from field '{self.image_key}'") from err
            except (OSError, pa.ArrowException) as err:
                self._batch = None
                raise DatasetFormatError(f"{path}: cannot read field '{self.image_key}' ({_one_line(err)})") from err
        self._batch = (path, group, batches, batch_start, batch)
        value = batch.column(0)[row - batch_start].as_py()
        data = value.get("bytes") if isinstance(value, dict) else value
        if not data:
            raise DatasetFormatError(f"{path}: field '{self.image_key}' row {row} has no image bytes")
        try:
            with Image.open(BytesIO(data)) as image:
                array = np.asarray(image.convert("RGB"))
        except Exception as err:  # PIL raises many types on corrupt data
            raise DatasetFormatError(
                f"{path}: field '{self.image_key}' row {row} is not a decodable image ({err})"
            ) from err
        return self._check_image_shape(array, f"{path} row {row}")

    def _video_frame(self, episode: int, step: int) -> np.ndarray:
        meta = self._episode(episode)
        timestamps = self._numeric_columns(episode).get("timestamp")
        offset = float(timestamps[step]) if timestamps is not None else step / self.fps
        target = meta.video_from_ts + offset
        state = self._video(meta.video_path)
        tolerance = self.video_tolerance_s
        current = state.current
        if current is None or abs(current[0] - target) > tolerance:
            # Continue decoding when the target lies shortly ahead, else seek to the key frame before it.
            if current is None or state.frames is None or not (current[0] < target <= current[0] + 2.0):
                self._seek(state, target)
            current = self._decode_until(state, target)
        if abs(current[0] - target) > tolerance:
            raise DatasetFormatError(
                f"{state.path}: no frame of '{self.image_key}' at {target:.4f}s (closest decoded {current[0]:.4f}s, "
                f"episode_index={meta.index} step {step})"
            )
        return self._check_image_shape(_to_rgb(current[1]), f"{state.path} at {target:.4f}s")

    def _seek(self, state: _VideoState, target: float) -> None:
        import av

        stream = state.stream
        position = max(0, int((target - self.video_tolerance_s) / stream.time_base))
        try:
            state.container.seek(position, stream=stream, backward=True, any_frame=False)
        except av.FFmpegError as err:
            raise DatasetFormatError(f"{state.path}: cannot seek to {target:.4f}s ({_one_line(err)})") from err
        state.frames = state.container.decode(stream)
        state.current = None

    def _decode_until(self, state: _VideoState, target: float) -> tuple[float, Any]:
        import av

        last = state.current
        try:
            for frame in state.frames:
                if frame.pts is None:
                    continue
                time = float(frame.pts * state.stream.time_base)
                last = (time, frame)
                if time >= target - self.video_tolerance_s:
                    break
            else:
                state.frames = None
        except av.FFmpegError as err:
            state.frames = None
            state.current = None
            raise DatasetFormatError(f"{state.path}: cannot decode video ({_one_line(err)})") from err
        if last is None:
            raise DatasetFormatError(f"{state.path}: no video frame at or after {target:.4f}s")
        state.current = last
        return last

    def __repr__(self) -> str:
        storage = "video" if self.is_video else "embedded"
        return (
            f"LeRobotReader({str(self.root)!r}, version={self.version!r}, episodes={len(self)}, "
            f"image_key={self.image_key!r} ({storage}))"
        )


__all__ = ["PRIMARY_IMAGE_KEYS", "SUPPORTED_VERSIONS", "LeRobotReader"]

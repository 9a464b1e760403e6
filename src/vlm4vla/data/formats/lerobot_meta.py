"""LeRobot dataset metadata, format v3.0 and v2.1 (v2.0 has the v2.1 layout).

v3.0 (``codebase_version`` ``"v3.0"``): several episodes per file.
  ``meta/info.json`` (``fps``, ``features``, ``data_path`` / ``video_path`` templates),
  ``meta/tasks.parquet`` (task string + ``task_index``), ``meta/episodes/chunk-*/file-*.parquet``
  (``episode_index``, ``length``, ``data/{chunk,file}_index``, ``dataset_{from,to}_index``,
  ``videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}``),
  ``data/chunk-{c:03d}/file-{f:03d}.parquet`` and ``videos/<key>/chunk-{c:03d}/file-{f:03d}.mp4``.
v2.1: one file per episode.
  ``meta/{episodes,tasks,episodes_stats}.jsonl``, ``data/chunk-{c:03d}/episode_{e:06d}.parquet``,
  ``videos/chunk-{c:03d}/<key>/episode_{e:06d}.mp4``.

:class:`LeRobotMetadata` parses ``meta/`` and checks ``info.json`` against it (``total_episodes``
/ ``total_frames``; v3.0: every data file's row count and schema, from its footer) and against
the data when a file is opened or a frame decoded: a lie is one error naming the file and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlm4vla.data.formats.base import DatasetFormatError, one_line, read_json

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
IMAGE_DTYPES = ("image", "video")


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{path}: {what} not found") from err
    except OSError as err:
        raise DatasetFormatError(f"{path}: cannot read {what} ({one_line(err)})") from err
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetFormatError(f"{path}: line {number} is not JSON ({one_line(err)})") from err
    return rows


def read_parquet(path: Path, columns: Sequence[str] | None, what: str) -> pa.Table:
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
        raise DatasetFormatError(f"{path}: cannot read {what} ({one_line(err)})") from err


def open_parquet(path: Path) -> pq.ParquetFile:
    """A data file, memory-mapped (reads only its footer)."""
    if not path.is_file():
        raise DatasetFormatError(f"{path}: data file not found")
    try:
        return pq.ParquetFile(path, memory_map=True)
    except (OSError, pa.ArrowException) as err:
        raise DatasetFormatError(f"{path}: cannot open parquet file ({one_line(err)})") from err


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


@dataclass(frozen=True)
class EpisodeMeta:
    index: int  # the dataset's ``episode_index``
    length: int
    data_path: Path
    row_start: int  # first row of the episode in ``data_path``
    video_path: Path | None  # mp4 of the primary camera, if stored as video
    video_from_ts: float  # timestamp of the episode's first frame in ``video_path``
    tasks: tuple[str, ...]  # from the episodes metadata (fallback when there is no task_index)


class LeRobotMetadata:
    """``meta/`` of a LeRobot dataset for one camera and action feature.

    Attributes: ``info``, ``version``, ``features``, ``fps``, ``image_key`` (resolved, see
    :class:`~vlm4vla.data.formats.lerobot.LeRobotReader`), ``is_video``, ``tasks``
    (``task_index`` → text), ``episodes`` (``episode_index`` → :class:`EpisodeMeta`).
    """

    def __init__(self, root: Path, *, image_key: str | None, action_key: str) -> None:
        self.root = root
        self.action_key = action_key
        self.info_path = root / "meta" / "info.json"
        self.info: dict[str, Any] = read_json(self.info_path, "info.json")
        self.version: str = str(self.info.get("codebase_version", ""))
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetFormatError(
                f"{self.info_path}: field 'codebase_version' is {self.version!r}, "
                f"supported: {', '.join(SUPPORTED_VERSIONS)}"
            )
        self.features: dict[str, Any] = self._info_field("features", dict)
        self.fps = float(self._info_field("fps", (int, float)))
        self._data_template: str = self._info_field("data_path", str)
        self._check_action_feature()
        self.image_key = self._resolve_image_key(image_key)
        self.is_video = self.features[self.image_key].get("dtype") == "video"
        self._video_template: str | None = self._info_field("video_path", str) if self.is_video else None
        self.tasks, self.tasks_path = self._load_tasks()
        self.episodes = self._load_episodes_v3() if self.version == "v3.0" else self._load_episodes_v2()
        self.episodes_path = "meta/episodes/" if self.version == "v3.0" else "meta/episodes.jsonl"
        self._image_hw = self._declared_image_hw()
        # Rows each data file must hold: the lengths of its episodes in the metadata.
        self._file_rows: dict[Path, int] = {}
        for meta in self.episodes.values():
            self._file_rows[meta.data_path] = self._file_rows.get(meta.data_path, 0) + meta.length
        self._checked_files: set[Path] = set()

    def _info_field(self, name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in self.info:
            raise DatasetFormatError(f"{self.info_path}: missing field '{name}'")
        value = self.info[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DatasetFormatError(f"{self.info_path}: field '{name}' has type {type(value).__name__}")
        return value

    def _check_action_feature(self) -> None:
        feature = self.features.get(self.action_key)
        if not isinstance(feature, dict):
            numeric = [k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") not in IMAGE_DTYPES]
            raise DatasetFormatError(
                f"{self.info_path}: missing field 'features.{self.action_key}' "
                f"(non-image features: {', '.join(numeric) or 'none'}; choose one with action_key)"
            )
        shape = feature.get("shape")
        if not isinstance(shape, list) or math.prod(shape) != 7:
            raise DatasetFormatError(
                f"{self.info_path}: field 'features.{self.action_key}.shape' is {shape}, expected [7]"
            )
        if _numeric_kind(feature.get("dtype")) is None:
            raise DatasetFormatError(
                f"{self.info_path}: field 'features.{self.action_key}.dtype' is {feature.get('dtype')!r}, "
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

    def check_totals(self) -> None:
        """``total_episodes`` / ``total_frames`` of info.json against the episodes metadata, and
        (v3.0: few large files) every data file against both, from its footer only."""
        frames = sum(meta.length for meta in self.episodes.values())
        for field, actual in (("total_episodes", len(self.episodes)), ("total_frames", frames)):
            declared = self.info.get(field)
            if isinstance(declared, int) and not isinstance(declared, bool) and declared != actual:
                raise DatasetFormatError(
                    f"{self.info_path}: field '{field}' is {declared} but {self.episodes_path} lists {actual}"
                )
        if self.version == "v3.0":
            for path in self._file_rows:
                handle = open_parquet(path)
                try:
                    self.check_data_file(path, handle)
                finally:
                    handle.close()

    def check_data_file(self, path: Path, handle: pq.ParquetFile) -> None:
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
                f"{self.info_path}: field 'features.{self.action_key}.dtype' is {declared!r} but {path} "
                f"stores {schema.field(self.action_key).type}"
            )
        expected = self._file_rows.get(path)
        rows = handle.metadata.num_rows
        if expected is not None and rows != expected:
            raise DatasetFormatError(
                f"{path}: holds {rows} rows but {self.episodes_path} field 'length' gives its episodes {expected}"
            )
        self._checked_files.add(path)

    def check_image_shape(self, image: np.ndarray, where: str) -> np.ndarray:
        if self._image_hw is not None and image.shape[:2] != self._image_hw:
            raise DatasetFormatError(
                f"{self.info_path}: field 'features.{self.image_key}.shape' is "
                f"{self.features[self.image_key].get('shape')} but {where} decodes to {tuple(image.shape)}"
            )
        return image

    def _resolve_image_key(self, image_key: str | None) -> str:
        cameras = [k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") in IMAGE_DTYPES]
        if image_key is not None:
            if image_key not in self.features:
                raise DatasetFormatError(
                    f"{self.info_path}: missing field 'features.{image_key}' (cameras: {', '.join(cameras) or 'none'})"
                )
            if image_key not in cameras:
                raise DatasetFormatError(
                    f"{self.info_path}: field 'features.{image_key}.dtype' is "
                    f"{self.features[image_key].get('dtype')!r}, expected 'image' or 'video'"
                )
            return image_key
        for key in PRIMARY_IMAGE_KEYS:
            if key in cameras:
                return key
        third_person = [k for k in cameras if "wrist" not in k and "depth" not in k and "hand" not in k]
        if third_person or cameras:
            return (third_person or cameras)[0]
        raise DatasetFormatError(f"{self.info_path}: field 'features' has no image or video feature")

    def _load_tasks(self) -> tuple[dict[int, str], Path]:
        if self.version == "v3.0":
            path = self.root / "meta" / "tasks.parquet"
            table = read_parquet(path, None, "tasks.parquet")
            names = table.column_names
            text = next((c for c in ("task", "__index_level_0__") if c in names), None)
            if "task_index" not in names:
                raise DatasetFormatError(f"{path}: missing field 'task_index'")
            if text is None:
                raise DatasetFormatError(f"{path}: missing field 'task' (the task string index)")
            indices, texts = table.column("task_index").to_pylist(), table.column(text).to_pylist()
        else:
            path = self.root / "meta" / "tasks.jsonl"
            rows = read_jsonl(path, "tasks.jsonl")
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
                f"{self.info_path}: field '{field}' template {template!r} ({one_line(err)})"
            ) from err

    def _load_episodes_v3(self) -> dict[int, EpisodeMeta]:
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
            table = read_parquet(path, wanted, "episodes metadata")
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
            episodes[index] = EpisodeMeta(
                index,
                length,
                data_path,
                int(row["dataset_from_index"] - file_start[(chunk, file)]),
                video_path,
                from_ts,
                tasks,
            )
        return episodes

    def _load_episodes_v2(self) -> dict[int, EpisodeMeta]:
        path = self.root / "meta" / "episodes.jsonl"
        chunks_size = int(self.info.get("chunks_size", 1000))
        episodes = {}
        for number, row in enumerate(read_jsonl(path, "episodes.jsonl"), 1):
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
            episodes[index] = EpisodeMeta(index, int(row["length"]), data_path, 0, video_path, 0.0, tasks)
        return episodes


__all__ = [
    "IMAGE_DTYPES",
    "PRIMARY_IMAGE_KEYS",
    "SUPPORTED_VERSIONS",
    "EpisodeMeta",
    "LeRobotMetadata",
    "open_parquet",
    "read_jsonl",
    "read_parquet",
]

"""RLDS / TFDS reader (Bridge-V2 ``bridge_dataset/1.0.0/``, LIBERO ``libero_10_no_noops/1.0.0/``).

A TFDS dataset directory holds ``dataset_info.json``, ``features.json`` and sharded tfrecord
files, named by the split's ``filepathTemplate`` in ``dataset_info.json``: TFDS writes
``<name>-<split>.tfrecord-00000-of-0000N``, the ``rlds`` EpisodeWriter / envlogger
``<name>-<split>.tfrecord-00000``. Each TFRecord record is framed as::

    uint64 length | uint32 masked_crc32c(length bytes) | payload | uint32 masked_crc32c(payload)

and its payload is one serialized ``tf.train.Example`` per episode, whose step fields are
flattened with the ``steps/`` prefix and concatenated over time (``steps/action`` holds T·7
floats, ``steps/observation/image_0`` T JPEG strings, ...). Shapes come from ``features.json``.

No TensorFlow is needed: the ``tensorflow.Example`` message classes are built at runtime from a
``FileDescriptorProto`` in a private descriptor pool, and CRCs are checked with ``crc32c``.

The record index (file, offset, length per episode) is built on first use from the framing
alone (12 bytes read per record). An episode's payload is read and parsed only when one of its
fields is asked for; the last parsed episode is cached per process. Files are read with
``os.pread`` through descriptors opened lazily per process, so a reader can be pickled into
DataLoader workers (descriptors are dropped and reopened there).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import struct
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from PIL import Image

from vlm4vla.data.formats.base import DatasetFormatError, check_actions

logger = logging.getLogger(__name__)

#: Primary third-person camera, in order of preference, when ``image_key`` is not given.
PRIMARY_IMAGE_KEYS = (
    "steps/observation/image_0",  # Bridge-V2
    "steps/observation/image",  # LIBERO / most Open-X RLDS ports
    "steps/observation/agentview_rgb",
    "steps/observation/rgb",
    "steps/observation/image_1",
)
ACTION_KEY = "steps/action"
INSTRUCTION_KEY = "steps/language_instruction"

#: Decoded frames whose pixel values span at most this range are blank (one colour).
BLANK_TOLERANCE = 2

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_CRC_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C: ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32)."""
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _CRC_MASK_DELTA) & 0xFFFFFFFF


# -- tf.train.Example without TensorFlow ------------------------------------------------------
def _example_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """tensorflow/core/example/{feature,example}.proto (package ``tensorflow``), proto3."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="vlm4vla/tensorflow_example.proto", package="tensorflow", syntax="proto3"
    )
    F = descriptor_pb2.FieldDescriptorProto

    def message(name: str, fields: list[tuple[str, int, int, int, str | None]]) -> descriptor_pb2.DescriptorProto:
        msg = fdp.message_type.add(name=name)
        for field_name, number, label, ftype, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label, type=ftype)
            if type_name:
                field.type_name = type_name
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, rep, F.TYPE_BYTES, None)])
    message("FloatList", [("value", 1, rep, F.TYPE_FLOAT, None)])
    message("Int64List", [("value", 1, rep, F.TYPE_INT64, None)])
    feature = message(
        "Feature",
        [
            ("bytes_list", 1, opt, F.TYPE_MESSAGE, ".tensorflow.BytesList"),
            ("float_list", 2, opt, F.TYPE_MESSAGE, ".tensorflow.FloatList"),
            ("int64_list", 3, opt, F.TYPE_MESSAGE, ".tensorflow.Int64List"),
        ],
    )
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features", [("feature", 1, rep, F.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=opt, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=opt, type=F.TYPE_MESSAGE, type_name=".tensorflow.Feature")
    entry.options.map_entry = True
    message("Example", [("features", 1, opt, F.TYPE_MESSAGE, ".tensorflow.Features")])
    return fdp


def _build_example_classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_example_file_descriptor())
    names = ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{n}")) for n in names}


_EXAMPLE_CLASSES = _build_example_classes()
Example = _EXAMPLE_CLASSES["Example"]
Feature = _EXAMPLE_CLASSES["Feature"]
BytesList = _EXAMPLE_CLASSES["BytesList"]
FloatList = _EXAMPLE_CLASSES["FloatList"]
Int64List = _EXAMPLE_CLASSES["Int64List"]


# -- features.json --------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSpec:
    """One leaf of ``features.json``, keyed by its flattened name (``steps/observation/state``)."""

    kind: str  # "image", "tensor" (Tensor and Scalar), "text"
    shape: tuple[int, ...]  # per step for ``steps/`` fields; -1 for unknown dimensions
    dtype: str
    encoding: str = ""  # image encoding format ("jpeg", "png")
    in_steps: bool = False


def _shape(node: dict[str, Any]) -> tuple[int, ...]:
    dims = node.get("shape", {}).get("dimensions", [])
    return tuple(int(d) for d in dims)


def parse_features_json(path: Path) -> dict[str, FeatureSpec]:
    """Flatten a TFDS ``features.json`` (FeaturesDict / Dataset / Tensor / Image / Text)."""
    try:
        tree = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{path}: features.json not found") from err
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"{path}: cannot read features.json ({' '.join(str(err).split())})") from err
    specs: dict[str, FeatureSpec] = {}

    def walk(node: Any, prefix: str, in_steps: bool) -> None:
        if not isinstance(node, dict):
            raise DatasetFormatError(f"{path}: field '{prefix or '<root>'}' is not a feature object")
        if "featuresDict" in node:
            children = node["featuresDict"].get("features", {})
            for name, child in children.items():
                walk(child, f"{prefix}/{name}" if prefix else name, in_steps)
        elif "sequence" in node:  # tfds.features.Dataset (RLDS ``steps``) or Sequence
            walk(node["sequence"].get("feature", {}), prefix, True)
        elif "image" in node:
            image = node["image"]
            specs[prefix] = FeatureSpec(
                "image",
                _shape(image),
                image.get("dtype", "uint8"),
                image.get("encodingFormat", "png"),
                in_steps,
            )
        elif "tensor" in node:
            tensor = node["tensor"]
            specs[prefix] = FeatureSpec("tensor", _shape(tensor), tensor.get("dtype", "float32"), "", in_steps)
        elif "text" in node:
            specs[prefix] = FeatureSpec("text", (), "string", "", in_steps)
        else:
            known = ", ".join(sorted(k for k in node if k not in ("pythonClassName", "description")))
            raise DatasetFormatError(f"{path}: field '{prefix or '<root>'}' has an unsupported feature type ({known})")

    walk(tree, "", False)
    if not specs:
        raise DatasetFormatError(f"{path}: no features declared")
    return specs


# -- split files ------------------------------------------------------------------------------
def _read_dataset_info(root: Path) -> dict[str, Any]:
    path = root / "dataset_info.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{path}: dataset_info.json not found") from err
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"{path}: cannot read dataset_info.json ({' '.join(str(err).split())})") from err
    if not isinstance(info, dict) or not info.get("name"):
        raise DatasetFormatError(f"{path}: missing field 'name'")
    return info


_SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})$")
_MIN_SHARD_DIGITS = 5  # TFDS pads shard numbers to max(5, digits of the shard count)


def _file_format(info: dict[str, Any]) -> str:
    return str(info.get("fileFormat") or "tfrecord").lower()  # TFDS's default when absent


def _declared_split(info: dict[str, Any], split: str) -> dict[str, Any] | None:
    return next((s for s in info.get("splits", []) if isinstance(s, dict) and s.get("name") == split), None)


def _template_files(root: Path, info: dict[str, Any], split: str) -> list[Path] | None:
    """Shard paths as TFDS names them from ``filepathTemplate`` and ``shardLengths``
    (``{DATASET}``, ``{SPLIT}``, ``{FILEFORMAT}``, ``{SHARD_INDEX}``, ``{NUM_SHARDS}``,
    ``{SHARD_X_OF_Y}``), or None when ``dataset_info.json`` does not declare them."""
    declared = _declared_split(info, split)
    if not declared or not declared.get("filepathTemplate") or "shardLengths" not in declared:
        return None
    template, count = str(declared["filepathTemplate"]), len(declared["shardLengths"])
    digits = max(len(str(count)), _MIN_SHARD_DIGITS)
    total = f"{count:0{digits}d}"
    values = {"DATASET": info["name"], "SPLIT": split, "FILEFORMAT": _file_format(info)}
    files = []
    for shard in range(count):
        index = f"{shard:0{digits}d}"
        try:
            name = template.format(**values, SHARD_INDEX=index, NUM_SHARDS=total, SHARD_X_OF_Y=f"{index}-of-{total}")
        except (KeyError, IndexError, ValueError) as err:
            raise DatasetFormatError(
                f"{root / 'dataset_info.json'}: field 'splits[{split}].filepathTemplate' is {template!r}, "
                f"expected TFDS variables {{DATASET}}, {{SPLIT}}, {{FILEFORMAT}}, {{SHARD_INDEX}}, "
                f"{{NUM_SHARDS}}, {{SHARD_X_OF_Y}} ({' '.join(str(err).split())})"
            ) from err
        files.append(root / name)
    return files


def _split_files(root: Path, info: dict[str, Any], split: str) -> tuple[list[Path], list[int] | None]:
    """Shard files of ``split`` in shard order, and their declared record counts if known.

    The files ``dataset_info.json`` names (``filepathTemplate`` × ``shardLengths``, as TFDS
    reads them) when they exist; else ``<name>-<split>.tfrecord-NNNNN-of-NNNNN`` by glob.
    """
    name = info["name"]
    if _file_format(info) != "tfrecord":
        raise DatasetFormatError(
            f"{root / 'dataset_info.json'}: field 'fileFormat' is {info.get('fileFormat')!r}, expected 'tfrecord'"
        )
    declared = _declared_split(info, split)
    lengths = [int(n) for n in declared["shardLengths"]] if declared and "shardLengths" in declared else None
    named = _template_files(root, info, split)
    if named is not None:
        present = [f.is_file() for f in named]
        if all(present):
            return named, lengths
        if any(present):
            missing = [i for i, ok in enumerate(present) if not ok]
            raise DatasetFormatError(
                f"{root}: split '{split}' is missing shard(s) {missing} of {len(named)} "
                f"({named[missing[0]].name} named by dataset_info.json 'filepathTemplate')"
            )
        # None of them: the files were renamed or the template hand-written; try the glob.
    files = sorted(root.glob(f"{name}-{split}.tfrecord-*-of-*"))
    files = [f for f in files if _SHARD_RE.search(f.name)]
    if files:
        total = int(_SHARD_RE.search(files[0].name).group(2))
        numbers = [int(_SHARD_RE.search(f.name).group(1)) for f in files]
        if numbers != list(range(total)):
            missing = sorted(set(range(total)) - set(numbers))
            raise DatasetFormatError(
                f"{root}: split '{split}' is missing shard(s) {missing} of {total} "
                f"({name}-{split}.tfrecord-NNNNN-of-{total:05d})"
            )
        if lengths is not None and len(lengths) != total:
            raise DatasetFormatError(
                f"{root / 'dataset_info.json'}: field 'splits[{split}].shardLengths' lists {len(lengths)} "
                f"shards but {total} files exist"
            )
    return files, lengths


def _expected_shards(root: Path, info: dict[str, Any], split: str) -> str:
    """What the shards of ``split`` would be called, for the "no shards" message."""
    named = _template_files(root, info, split)
    if named:
        return f"{named[0].name}, ... from dataset_info.json 'filepathTemplate'"
    return f"{info['name']}-{split}.tfrecord-*-of-*"


def has_split(root: str | Path, split: str) -> bool:
    """Whether the TFDS directory ``root`` holds tfrecord shards for ``split``."""
    root = Path(root)
    try:
        info = _read_dataset_info(root)
    except DatasetFormatError:
        return False
    return bool(_split_files(root, info, split)[0])


def is_blank(image: np.ndarray) -> bool:
    """One colour everywhere (what RLDS builders write for a missing camera)."""
    return image.size == 0 or int(image.max()) - int(image.min()) <= BLANK_TOLERANCE


def _step_key(key: str) -> str:
    """``action`` → ``steps/action``; flattened names (``steps/…``, ``episode_metadata/…``) as given."""
    return key if key.startswith(("steps/", "episode_metadata/")) else f"steps/{key}"


# -- reader -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Record:
    file: int  # position in ``RLDSReader.files``
    offset: int  # byte offset of the record header
    length: int  # payload length


class RLDSReader:
    """:class:`~vlm4vla.data.formats.base.EpisodeReader` over one split of an RLDS dataset.

    Args:
        root: the versioned TFDS directory (``.../bridge_dataset/1.0.0``).
        split: ``"train"``, ``"val"``, ``"test"``, ... (file name component).
        image_key: primary camera, a full flattened name (``steps/observation/image_0``) or the
            name under ``steps/observation/`` (``image_0``). ``None`` picks the first of
            :data:`PRIMARY_IMAGE_KEYS` declared in ``features.json``.
        action_key: the per-step action tensor (default ``steps/action``; a name without the
            ``steps/`` prefix gets it).
        instruction_key: the text feature holding the instruction (default
            ``steps/language_instruction``; same prefix rule).

    Images are returned as stored. RLDS ports keep them upright (LIBERO's RLDS conversion
    already rotated the upside-down HDF5 frames by 180°), hence :attr:`stored_rotated_180` is
    ``False``; datamodules use the attribute to bring every format to the upright convention.

    Episodes whose primary camera is really missing are skipped: they report length 0 and no
    actions, so no sample is drawn from them; :attr:`skipped_episodes` collects them and a
    warning with the running count is logged. Missing means the metadata flag (Bridge
    ``episode_metadata/has_image_0``) is 0 *and* every frame of the camera is blank: the
    Bridge builder sets the flags to 0 on episodes with real frames, so the flag alone is not
    trusted (the frames of a flagged episode are decoded until one is not blank, usually the
    first). (Knowing this up front would mean reading every payload when the reader opens;
    the record index is built from the framing only.)
    """

    stored_rotated_180 = False

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "train",
        image_key: str | None = None,
        action_key: str | None = None,
        instruction_key: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetFormatError(f"{self.root}: RLDS dataset directory not found")
        self.info = _read_dataset_info(self.root)
        self.name: str = self.info["name"]
        self.features = parse_features_json(self.root / "features.json")
        self.files, self._shard_lengths = _split_files(self.root, self.info, split)
        if not self.files:
            raise DatasetFormatError(
                f"{self.root}: no shards for split '{split}' ({_expected_shards(self.root, self.info, split)})"
            )
        self.image_key = self._resolve_image_key(image_key)
        self.action_key = _step_key(action_key or ACTION_KEY)
        self.instruction_key = _step_key(instruction_key or INSTRUCTION_KEY)
        self._check_feature(self.action_key, ("tensor",))
        self._check_feature(self.instruction_key, ("text", "tensor"), in_steps=None)
        if self.features[self.instruction_key].dtype != "string":  # Text, or a string Tensor in some ports
            raise DatasetFormatError(
                f"{self.root / 'features.json'}: field '{self.instruction_key}' has dtype "
                f"{self.features[self.instruction_key].dtype}, expected a text feature"
            )
        self.action_shape = self.features[self.action_key].shape
        if math.prod(self.action_shape) != 7:
            raise DatasetFormatError(
                f"{self.root / 'features.json'}: field '{self.action_key}' has shape {self.action_shape}, expected (7,)"
            )
        self.image_shape = self.features[self.image_key].shape
        camera = self.image_key.rsplit("/", 1)[-1]
        self._has_camera_key = f"episode_metadata/has_{camera}"
        self.skipped_episodes: set[int] = set()  # flagged missing and really blank
        self.flag_ignored_episodes: set[int] = set()  # flagged missing but with real frames
        self._records: list[_Record] | None = None
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self._cached: tuple[int, Any] | None = None  # (episode, parsed Example)
        self._lengths: dict[int, int] = {}

    def _check_feature(self, key: str, kinds: tuple[str, ...], in_steps: bool | None = True) -> None:
        """``key`` is declared with one of ``kinds`` (and per step unless ``in_steps`` is None)."""
        spec = self.features.get(key)
        if spec is None:
            fitting = [k for k, s in self.features.items() if s.kind in kinds and (in_steps is None or s.in_steps)]
            raise DatasetFormatError(
                f"{self.root / 'features.json'}: missing field '{key}' "
                f"({'/'.join(kinds)} features: {', '.join(fitting) or 'none'})"
            )
        if spec.kind not in kinds or (in_steps and not spec.in_steps):
            raise DatasetFormatError(
                f"{self.root / 'features.json'}: field '{key}' is a {spec.kind} feature "
                f"{'inside' if spec.in_steps else 'outside'} steps, expected a per-step {'/'.join(kinds)}"
            )

    def _resolve_image_key(self, image_key: str | None) -> str:
        if image_key is not None:
            key = image_key if image_key.startswith("steps/") else f"steps/observation/{image_key}"
            self._check_feature(key, ("image",))
            return key
        for key in PRIMARY_IMAGE_KEYS:
            if key in self.features and self.features[key].kind == "image":
                return key
        images = [k for k, s in self.features.items() if s.kind == "image" and s.in_steps]
        upright = [k for k in images if "wrist" not in k and "depth" not in k]
        if upright or images:
            return (upright or images)[0]
        raise DatasetFormatError(f"{self.root / 'features.json'}: no per-step image feature (steps/observation/*)")

    # -- files and index -------------------------------------------------------------------------
    def _fd(self, file: int) -> int:
        if self._pid != os.getpid():  # forked: descriptors of the parent are not ours to use
            self._fds = {}
            self._cached = None
            self._pid = os.getpid()
        fd = self._fds.get(file)
        if fd is None:
            path = self.files[file]
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError as err:
                raise DatasetFormatError(f"{path}: tfrecord shard not found") from err
            except OSError as err:
                raise DatasetFormatError(f"{path}: cannot open tfrecord shard ({err.strerror})") from err
            self._fds[file] = fd
        return fd

    def _pread(self, file: int, size: int, offset: int) -> bytes:
        fd = self._fd(file)
        chunks = []
        while size > 0:
            chunk = os.pread(fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def _scan(self, file: int) -> list[_Record]:
        """Index one shard from its framing, checking length CRCs and truncation."""
        path = self.files[file]
        size = os.fstat(self._fd(file)).st_size
        records: list[_Record] = []
        offset = 0
        while offset < size:
            header = self._pread(file, _HEADER.size, offset)
            if len(header) < _HEADER.size:
                raise DatasetFormatError(f"{path}: truncated record header at offset {offset}")
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise DatasetFormatError(f"{path}: record at offset {offset}: length CRC32C mismatch")
            end = offset + _HEADER.size + length + _FOOTER.size
            if end > size:
                raise DatasetFormatError(
                    f"{path}: record at offset {offset} is truncated ({length} payload bytes announced, "
                    f"{size - offset - _HEADER.size - _FOOTER.size} present)"
                )
            records.append(_Record(file, offset, length))
            offset = end
        if self._shard_lengths is not None and len(records) != self._shard_lengths[file]:
            raise DatasetFormatError(
                f"{path}: holds {len(records)} records but dataset_info.json field "
                f"'splits[{self.split}].shardLengths' says {self._shard_lengths[file]}"
            )
        return records

    def _index(self) -> list[_Record]:
        if self._records is None:
            records: list[_Record] = []
            for file in range(len(self.files)):
                records.extend(self._scan(file))
            self._records = records
        return self._records

    def close(self) -> None:
        """Close this process's file descriptors and drop the cached episode (they reopen lazily)."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}
        self._cached = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown ``os`` may be gone
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"] = {}
        state["_cached"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    # -- parsing -------------------------------------------------------------------------------
    def _record(self, episode: int) -> _Record:
        records = self._index()
        if not 0 <= episode < len(records):
            raise IndexError(f"episode {episode} out of range [0, {len(records)})")
        return records[episode]

    def episode_source(self, episode: int) -> str:
        record = self._record(episode)
        return f"{self.files[record.file]}@{record.offset}"

    def _example(self, episode: int) -> Any:
        if self._cached is not None and self._cached[0] == episode and self._pid == os.getpid():
            return self._cached[1]
        record = self._record(episode)
        path = self.files[record.file]
        start = record.offset + _HEADER.size
        blob = self._pread(record.file, record.length + _FOOTER.size, start)
        if len(blob) != record.length + _FOOTER.size:
            raise DatasetFormatError(f"{path}: record at offset {record.offset} is truncated")
        payload = blob[: record.length]
        (stored,) = _FOOTER.unpack(blob[record.length :])
        if masked_crc32c(payload) != stored:
            raise DatasetFormatError(f"{path}: record at offset {record.offset}: payload CRC32C mismatch")
        example = Example()
        try:
            example.ParseFromString(payload)
        except Exception as err:  # protobuf raises DecodeError or RuntimeError
            raise DatasetFormatError(
                f"{path}: record at offset {record.offset} is not a tf.train.Example ({err})"
            ) from err
        self._cached = (episode, example)
        return example

    def _feature(self, episode: int, key: str, kind: str) -> Any:
        """The repeated ``value`` container of ``key`` (``kind``: bytes_list/float_list/int64_list)."""
        features = self._example(episode).features.feature
        if key not in features:
            raise DatasetFormatError(f"{self.episode_source(episode)}: missing field '{key}'")
        feature = features[key]
        found = feature.WhichOneof("kind")
        if found != kind:
            raise DatasetFormatError(f"{self.episode_source(episode)}: field '{key}' is a {found}, expected {kind}")
        return getattr(feature, kind).value

    def _numeric(self, episode: int, key: str) -> np.ndarray:
        """A per-step tensor field as (T, *shape), in its stored type (float32 or int64)."""
        spec = self.features.get(key)
        if spec is None:
            raise DatasetFormatError(f"{self.root / 'features.json'}: missing field '{key}'")
        features = self._example(episode).features.feature
        if key not in features:
            raise DatasetFormatError(f"{self.episode_source(episode)}: missing field '{key}'")
        kind = features[key].WhichOneof("kind")
        if kind == "float_list":
            values = np.asarray(features[key].float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            values = np.asarray(features[key].int64_list.value, dtype=np.int64)
        else:
            raise DatasetFormatError(f"{self.episode_source(episode)}: field '{key}' is a {kind}, expected numbers")
        per_step = math.prod(spec.shape) if spec.shape else 1
        if not spec.in_steps:
            return values.reshape(spec.shape) if spec.shape else values.reshape(())
        if per_step <= 0 or values.size % per_step:
            raise DatasetFormatError(
                f"{self.episode_source(episode)}: field '{key}' has {values.size} values, "
                f"not a multiple of its per-step shape {spec.shape} from features.json"
            )
        return values.reshape((-1, *spec.shape))

    def _primary_flagged_missing(self, episode: int) -> bool:
        features = self._example(episode).features.feature
        if self._has_camera_key not in features:
            return False
        flag = features[self._has_camera_key]
        values = flag.int64_list.value if flag.WhichOneof("kind") == "int64_list" else flag.float_list.value
        return len(values) > 0 and not values[0]

    def _primary_blank(self, episode: int) -> bool:
        """Every frame of the primary camera is empty bytes or one colour (stops at the first
        real frame, so an episode with real frames costs one decode)."""
        for step, data in enumerate(self._feature(episode, self.image_key, "bytes_list")):
            if data and not is_blank(self._decode(episode, step, self.image_key, data)):
                return False
        return True

    def _skip(self, episode: int) -> bool:
        if episode in self.skipped_episodes:
            return True
        if episode in self.flag_ignored_episodes or not self._primary_flagged_missing(episode):
            return False
        if not self._primary_blank(episode):
            if not self.flag_ignored_episodes:
                logger.warning(
                    "%s: '%s' is 0 but '%s' holds real frames (a known Bridge builder bug); "
                    "using such episodes (the flag is ignored)",
                    self.episode_source(episode),
                    self._has_camera_key,
                    self.image_key,
                )
            self.flag_ignored_episodes.add(episode)
            return False
        self.skipped_episodes.add(episode)
        logger.warning(
            "%s: '%s' is 0 and every '%s' frame is blank, skipping the episode "
            "(%d skipped so far in split '%s')",
            self.episode_source(episode),
            self._has_camera_key,
            self.image_key,
            len(self.skipped_episodes),
            self.split,
        )
        return True

    # -- EpisodeReader -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index())

    def episode_length(self, episode: int) -> int:
        length = self._lengths.get(episode)
        if length is None:
            length = 0 if self._skip(episode) else len(self._raw_actions(episode))
            self._lengths[episode] = length
        return length

    def _raw_actions(self, episode: int) -> np.ndarray:
        actions = self._numeric(episode, self.action_key).reshape(-1, 7)
        images = self._feature(episode, self.image_key, "bytes_list")
        if len(images) != len(actions):
            raise DatasetFormatError(
                f"{self.episode_source(episode)}: field '{self.image_key}' has {len(images)} frames but "
                f"'{self.action_key}' has {len(actions)} steps"
            )
        return actions

    def actions(self, episode: int) -> np.ndarray:
        if self._skip(episode):
            return np.zeros((0, 7), dtype=np.float32)
        return check_actions(self._raw_actions(episode), self.episode_source(episode), self.action_key)

    def instruction(self, episode: int) -> str:
        """The first non-empty ``instruction_key`` value of the episode."""
        for value in self._feature(episode, self.instruction_key, "bytes_list"):
            text = value.decode("utf-8").strip()
            if text:
                return text
        return ""

    def field(self, episode: int, key: str) -> np.ndarray:
        """Any numeric field, e.g. ``steps/observation/state`` as float32/int64 (T, *shape)."""
        values = self._numeric(episode, key)
        return values.astype(np.float32) if values.dtype.kind == "f" else values

    def frame(self, episode: int, step: int) -> np.ndarray:
        """``image_key`` at ``step``, decoded (uint8 (H, W, 3)), as stored (upright)."""
        return self.image(episode, step, self.image_key)

    def image(self, episode: int, step: int, key: str | None = None) -> np.ndarray:
        """Decode one step of an image field (``key`` defaults to the primary camera)."""
        key = key or self.image_key
        if not key.startswith("steps/"):
            key = f"steps/observation/{key}"
        length = self.episode_length(episode)
        if not 0 <= step < length:
            raise IndexError(f"step {step} out of range [0, {length}) in {self.episode_source(episode)}")
        values = self._feature(episode, key, "bytes_list")
        if step >= len(values):
            raise DatasetFormatError(
                f"{self.episode_source(episode)}: field '{key}' has {len(values)} frames, step {step} asked"
            )
        return self._decode(episode, step, key, values[step])

    def _decode(self, episode: int, step: int, key: str, data: bytes) -> np.ndarray:
        try:
            with Image.open(BytesIO(data)) as img:
                array = np.asarray(img.convert("RGB"))
        except Exception as err:  # PIL raises many types on corrupt data
            raise DatasetFormatError(
                f"{self.episode_source(episode)}: field '{key}' step {step} is not a decodable image ({err})"
            ) from err
        spec = self.features.get(key)
        if spec is not None and len(spec.shape) == 3 and -1 not in spec.shape and array.shape != spec.shape:
            raise DatasetFormatError(
                f"{self.episode_source(episode)}: field '{key}' step {step} decodes to {array.shape}, "
                f"features.json says {spec.shape}"
            )
        return array

    def __repr__(self) -> str:
        count = len(self._records) if self._records is not None else "?"
        return f"RLDSReader({str(self.root)!r}, split={self.split!r}, episodes={count}, image_key={self.image_key!r})"


__all__ = [
    "ACTION_KEY",
    "INSTRUCTION_KEY",
    "PRIMARY_IMAGE_KEYS",
    "BytesList",
    "Example",
    "Feature",
    "FeatureSpec",
    "FloatList",
    "Int64List",
    "RLDSReader",
    "has_split",
    "is_blank",
    "masked_crc32c",
    "parse_features_json",
]

"""RLDS reader (Bridge-V2 ``bridge_dataset/1.0.0/``, LIBERO ``libero_10_no_noops/1.0.0/``).

Each record of a split's shards (directory layout in :mod:`.tfds`, framing and protobuf in
:mod:`.tfrecord`) is one ``tf.train.Example`` per episode, whose step fields are flattened with
the ``steps/`` prefix and concatenated over time (``steps/action`` holds T·7 floats,
``steps/observation/image_0`` T JPEG strings, ...). Shapes come from ``features.json``.

The record index (file, offset, length per episode) is built on first use from the framing
alone. An episode's payload is read and parsed only when one of its fields is asked for; the
last parsed episode is cached per process. Files are read with ``os.pread`` through
descriptors opened lazily per process (:class:`~.handles.HandleCache`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlm4vla.data.formats import tfrecord
from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader, check_actions, decode_image
from vlm4vla.data.formats.handles import HandleCache
from vlm4vla.data.formats.registry import EpisodeFormat, register_format
from vlm4vla.data.formats.tfds import (
    below_hint,
    expected_shards,
    has_split,
    parse_features_json,
    read_dataset_info,
    resolve_rlds_root,
    split_files,
)

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
STATE_KEY = "steps/observation/state"

#: Decoded frames whose pixel values span at most this range are blank (one colour).
BLANK_TOLERANCE = 2

def is_blank(image: np.ndarray) -> bool:
    """One colour everywhere (what RLDS builders write for a missing camera)."""
    return image.size == 0 or int(image.max()) - int(image.min()) <= BLANK_TOLERANCE


def _step_key(key: str) -> str:
    """``action`` → ``steps/action``; flattened names (``steps/…``, ``episode_metadata/…``) as given."""
    return key if key.startswith(("steps/", "episode_metadata/")) else f"steps/{key}"


def _observation_key(key: str) -> str:
    """``state`` / ``observation/state`` → ``steps/observation/state``; ``steps/…`` as given."""
    if key.startswith("steps/"):
        return key
    return f"steps/{key}" if key.startswith("observation/") else f"steps/observation/{key}"


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
        self.info = read_dataset_info(self.root)
        self.name: str = self.info["name"]
        self.features = parse_features_json(self.root / "features.json")
        self.files, self._shard_lengths = split_files(self.root, self.info, split)
        if not self.files:
            raise DatasetFormatError(
                f"{self.root}: no shards for split '{split}' ({expected_shards(self.root, self.info, split)})"
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
        self._fds: HandleCache[int, int] = HandleCache(close=os.close)  # shard position → descriptor
        self._examples: HandleCache[int, Any] = HandleCache(max_open=1, close=None)  # last parsed episode
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
    def _open_shard(self, file: int) -> int:
        path = self.files[file]
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError as err:
            raise DatasetFormatError(f"{path}: tfrecord shard not found") from err
        except OSError as err:
            raise DatasetFormatError(f"{path}: cannot open tfrecord shard ({err.strerror})") from err

    def _pread(self, file: int, size: int, offset: int) -> bytes:
        return tfrecord.pread(self._fds.get(file, self._open_shard), size, offset)

    def _scan(self, file: int) -> list[_Record]:
        """Index one shard from its framing, checking length CRCs and truncation."""
        path = self.files[file]
        size = os.fstat(self._fds.get(file, self._open_shard)).st_size
        found = tfrecord.scan_records(lambda n, offset: self._pread(file, n, offset), size, path)
        if self._shard_lengths is not None and len(found) != self._shard_lengths[file]:
            raise DatasetFormatError(
                f"{path}: holds {len(found)} records but dataset_info.json field "
                f"'splits[{self.split}].shardLengths' says {self._shard_lengths[file]}"
            )
        return [_Record(file, offset, length) for offset, length in found]

    def _index(self) -> list[_Record]:
        if self._records is None:
            records: list[_Record] = []
            for file in range(len(self.files)):
                records.extend(self._scan(file))
            self._records = records
        return self._records

    def close(self) -> None:
        """Close this process's file descriptors and drop the cached episode (they reopen lazily)."""
        self._fds.close()
        self._examples.close()

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
        return self._examples.get(episode, self._parse)

    def _parse(self, episode: int) -> Any:
        record = self._record(episode)
        path = self.files[record.file]
        payload = tfrecord.read_record(
            lambda n, offset: self._pread(record.file, n, offset), record.offset, record.length, path
        )
        return tfrecord.parse_example(payload, f"{path}: record at offset {record.offset}")

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

    def states(self, episode: int, key: str | None = None) -> np.ndarray:
        """The observation states (default ``steps/observation/state``; ``key`` may omit the
        ``steps/observation/`` prefix) as float32 (T, D), one row per step of the episode."""
        key = _observation_key(key or STATE_KEY)
        self._check_feature(key, ("tensor",))
        values = self._numeric(episode, key)
        states = values.reshape(len(values), -1).astype(np.float32)
        steps = len(self._numeric(episode, self.action_key).reshape(-1, 7))
        if len(states) != steps:
            raise DatasetFormatError(
                f"{self.episode_source(episode)}: field '{key}' has {len(states)} steps but "
                f"'{self.action_key}' has {steps}"
            )
        return states

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
        array = decode_image(data, f"{self.episode_source(episode)}: field '{key}' step {step}")
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


# -- format registration --------------------------------------------------------------------
@register_format("rlds")
class RLDSFormat(EpisodeFormat):
    """A TFDS directory, or its parent holding version directories; splits are its own."""

    looks_for = "features.json + *.tfrecord-*"
    accepts_instruction_key = True

    def detect(self, root: Path) -> bool:
        try:
            resolve_rlds_root(root)
        except DatasetFormatError:
            return False
        return True

    def open(
        self,
        root: Path,
        *,
        split: str = "train",
        image_key: str | None = None,
        action_key: str | None = None,
        instruction_key: str | None = None,
    ) -> EpisodeReader:
        return RLDSReader(
            resolve_rlds_root(root),
            split=split,
            image_key=image_key,
            action_key=action_key,
            instruction_key=instruction_key,
        )

    def data_root(self, root: Path) -> Path:
        return resolve_rlds_root(root)

    def has_split(self, root: Path, split: str) -> bool:
        return has_split(resolve_rlds_root(root), split)

    def not_found_hint(self, root: Path) -> str:
        return below_hint(root)


__all__ = ["ACTION_KEY", "INSTRUCTION_KEY", "PRIMARY_IMAGE_KEYS", "STATE_KEY", "RLDSFormat", "RLDSReader", "is_blank"]

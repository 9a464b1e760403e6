"""Shared machinery of the VLA datamodules: chunk datasets, the epoch-aware sampler, the base
LightningDataModule and the episode-format datamodule used by LIBERO and Bridge.

Sampling and determinism
------------------------
Datasets are map-style. A training sample is fetched with the key ``(index, epoch)``; its
augmentation is drawn from ``sample_rng(seed, epoch, index)``, so a batch depends only on the
seed, the epoch and the sampler order — never on the number of workers. The training
DataLoader uses :class:`EpochDistributedSampler`, a :class:`~torch.utils.data.DistributedSampler`
(replicas/rank taken from the Lightning strategy, 1/0 without one) that yields those keys;
Lightning recognises it as distributed and leaves it in place, and calls its ``set_epoch``
every epoch. Validation uses plain integer indices (no augmentation) and a sequential
sampler, which Lightning replaces by a non-shuffling ``DistributedSampler`` under DDP/FSDP.

NaN actions
-----------
With ``nan_policy="skip"`` (default) an episode (LIBERO/Bridge) or language window (CALVIN)
containing a non-finite action is dropped and a warning logs how many were dropped and where
the first ones are. ``nan_policy="error"`` raises a :class:`DatasetFormatError` naming the
file and field instead.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vlm4vla.data import cache
from vlm4vla.data.collate import InputsFn, VLACollator
from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader, check_actions, describe_episode
from vlm4vla.data.formats.detect import (
    EPISODE_FORMATS,
    detect_format,
    open_episode_reader,
    resolve_rlds_root,
    rlds_has_split,
)
from vlm4vla.data.normalization import (
    ActionNormalizer,
    GripperConvention,
    QuantileNormalizer,
    normalizer_from_dict,
)
from vlm4vla.data.transforms import ImageTransform, rotate_180, sample_rng

log = logging.getLogger(__name__)

NAN_POLICIES = ("skip", "error")
SampleKey = int | tuple[int, int]


def unpack_key(key: SampleKey) -> tuple[int, int]:
    """``index`` or ``(index, epoch)`` → ``(index, epoch)``."""
    if isinstance(key, (tuple, list)):
        index, epoch = key
        return int(index), int(epoch)
    return int(key), 0


def chunk_rows(first_row: int, remaining: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the next ``chunk_size`` actions when ``remaining`` (>= 1) are left in the
    window/episode; past the end the last row repeats and the mask is False."""
    steps = np.arange(chunk_size)
    mask = steps < remaining
    return first_row + np.minimum(steps, remaining - 1), mask


def prepare_actions(raw: np.ndarray, normalizer: ActionNormalizer) -> np.ndarray:
    """Raw (T, 7) → normalised arm dims + gripper target in {0, 1}, float32."""
    out = normalizer.normalize(raw.astype(np.float32, copy=False))
    out[:, 6] = normalizer.gripper.to_target(raw[:, 6])
    return np.ascontiguousarray(out, dtype=np.float32)


class ChunkDataset(Dataset, abc.ABC):
    """Frames of contiguous segments (episodes or language windows), each with its action chunk.

    ``actions`` holds the prepared (normalised) actions of all segments back to back;
    ``row_offsets[s]`` is where segment ``s`` starts and ``lengths[s]`` its number of frames.
    Subclasses load the image of (segment, step).
    """

    def __init__(
        self,
        *,
        lengths: np.ndarray,
        row_offsets: np.ndarray,
        actions: np.ndarray,
        instructions: Sequence[str],
        chunk_size: int,
        transform: ImageTransform | None = None,
        seed: int = 0,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.row_offsets = np.asarray(row_offsets, dtype=np.int64)
        self.actions = actions
        self.instructions = list(instructions)
        self.chunk_size = int(chunk_size)
        self.transform = transform
        self.seed = int(seed)
        self._starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Sample index → (segment, step inside the segment)."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        segment = int(np.searchsorted(self._starts, index, side="right") - 1)
        return segment, index - int(self._starts[segment])

    @abc.abstractmethod
    def load_image(self, segment: int, step: int) -> np.ndarray:
        """The image of a segment's step, upright, uint8 (H, W, 3)."""

    @abc.abstractmethod
    def metadata(self, segment: int, step: int) -> dict[str, int]:
        """Light per-sample metadata (episode and frame indices)."""

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        index, epoch = unpack_key(key)
        segment, step = self.locate(index)
        rows, mask = chunk_rows(
            int(self.row_offsets[segment]) + step, int(self.lengths[segment]) - step, self.chunk_size
        )
        image = self.load_image(segment, step)
        if self.transform is not None:
            image = self.transform(image, sample_rng(self.seed, epoch, index))
        return {
            "image": image,
            "instruction": self.instructions[segment],
            "actions": torch.from_numpy(self.actions[rows]),
            "action_mask": torch.from_numpy(mask),
            **self.metadata(segment, step),
        }


class EpisodeDataset(ChunkDataset):
    """Every frame of a set of episodes of an :class:`EpisodeReader`."""

    def __init__(self, reader: EpisodeReader, episodes: np.ndarray, *, rotate: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.reader = reader
        self.episodes = np.asarray(episodes, dtype=np.int64)
        self.rotate = bool(rotate)

    def load_image(self, segment: int, step: int) -> np.ndarray:
        episode = int(self.episodes[segment])
        image = np.asarray(self.reader.frame(episode, step))
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DatasetFormatError(
                f"{describe_episode(self.reader, episode)}: image at step {step} is {image.dtype} "
                f"{image.shape}, expected uint8 (H, W, 3)"
            )
        return rotate_180(image) if self.rotate else image

    def metadata(self, segment: int, step: int) -> dict[str, int]:
        return {"episode_index": int(self.episodes[segment]), "frame_index": int(step)}


class EpochDistributedSampler(DistributedSampler):
    """A :class:`DistributedSampler` that yields ``(index, epoch)`` keys.

    Same shuffling, padding and per-rank split as its parent (so Lightning keeps it under
    DDP/FSDP); the epoch travels with each index, which seeds that sample's augmentation
    in whichever worker fetches it.
    """

    _resume: tuple[int, int] | None = None

    def resume_from(self, epoch: int, samples_done: int) -> None:
        """Skip the first ``samples_done`` samples of this rank the next time ``epoch`` is iterated."""
        self._resume = (int(epoch), int(samples_done))

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = int(self.epoch)
        skip = 0
        if self._resume is not None and self._resume[0] == epoch:
            skip, self._resume = self._resume[1], None
        for position, index in enumerate(super().__iter__()):
            if position >= skip:
                yield (int(index), epoch)


class ResumableDataLoader(DataLoader):
    """A training DataLoader Lightning resumes mid-epoch (its ``state_dict`` interface).

    Lightning prefetches a batch ahead, so the loader's own count would be off by one: the
    number of batches consumed comes from the trainer's batch progress at save time. On
    restore, the sampler skips those samples of the same epoch, so an interrupted run sees
    exactly the batches an uninterrupted one would.
    """

    def __init__(self, *args: Any, batches_done: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        done = int(self._batches_done()) if self._batches_done is not None else 0
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches_done": done}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        if not isinstance(self.sampler, EpochDistributedSampler):
            return
        epoch, skip = int(state_dict["epoch"]), int(state_dict["batches_done"]) * int(self.batch_size)
        if skip >= len(self.sampler):  # saved on an epoch's last batch: the next epoch starts afresh
            epoch, skip = epoch + 1, 0
        self.sampler.resume_from(epoch, skip)
        # With worker processes, Lightning creates the iterator (which draws the first index
        # batches at once) before it sets the epoch of the resumed run: set it now.
        self.sampler.set_epoch(epoch)


class VLADataModule(pl.LightningDataModule, abc.ABC):
    """Common options and dataloaders. Subclasses build ``self._datasets`` in :meth:`setup`."""

    def __init__(
        self,
        *,
        chunk_size: int,
        batch_size: int = 32,
        num_workers: int = 4,
        seed: int = 0,
        image_augmentation: bool = True,
        inputs_fn: InputsFn | None = None,
        nan_policy: str = "skip",
        cache_dir: str | Path | None = None,
        val_batch_size: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        if chunk_size < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need chunk_size >= 1, batch_size >= 1, num_workers >= 0; got {chunk_size}, {batch_size}, {num_workers}"
            )
        self.chunk_size = int(chunk_size)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.image_augmentation = bool(image_augmentation)
        self.inputs_fn = inputs_fn
        self.nan_policy = nan_policy
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.pin_memory = bool(pin_memory)
        self._normalizer: ActionNormalizer | None = None
        self._datasets: dict[str, ChunkDataset] = {}

    # -- to implement ----------------------------------------------------------------------
    @abc.abstractmethod
    def _compute_normalizer(self) -> ActionNormalizer:
        """The dataset's action normaliser (statistics computed or read from the cache)."""

    @abc.abstractmethod
    def _build_datasets(self, stage: str | None) -> None:
        """Build ``self._datasets`` for ``stage``."""

    # -- normaliser -------------------------------------------------------------------------
    @property
    def normalizer(self) -> ActionNormalizer:
        """The action normaliser (computed or loaded from the stats cache on first access)."""
        if self._normalizer is None:
            self._normalizer = self._compute_normalizer()
        return self._normalizer

    def set_inputs_fn(self, inputs_fn: InputsFn | None) -> None:
        """Set the backbone's input function used by the collator of dataloaders built later."""
        self.inputs_fn = inputs_fn

    @property
    def collator(self) -> VLACollator:
        return VLACollator(self.inputs_fn)

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._build_datasets(stage)

    @property
    def train_dataset(self) -> ChunkDataset:
        return self._dataset("train")

    @property
    def val_dataset(self) -> ChunkDataset | None:
        if "val" not in self._datasets:
            self._dataset("train")  # raises the not-set-up error if nothing is built
        return self._datasets.get("val")

    def _dataset(self, split: str) -> ChunkDataset:
        if split not in self._datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the {split} dataset")
        return self._datasets[split]

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
            return int(kwargs.get("num_replicas", trainer.world_size)), int(
                kwargs.get("rank", trainer.global_rank)
            )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "collate_fn": VLACollator(self.inputs_fn),
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
        }

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset
        replicas, rank = self._replicas()
        sampler = EpochDistributedSampler(
            dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed
        )
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            batches_done=self._batches_done_this_epoch,
            **self._loader_kwargs(),
        )

    def _batches_done_this_epoch(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def val_dataloader(self) -> DataLoader | list:
        dataset = self.val_dataset
        if dataset is None or len(dataset) == 0:
            return []
        return DataLoader(dataset, batch_size=self.val_batch_size, shuffle=False, **self._loader_kwargs())

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning into every checkpoint: the normaliser, for evaluation to invert."""
        return {"normalizer": self.normalizer.to_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Adopt the checkpoint's normaliser (re-normalising built datasets if it differs)."""
        if "normalizer" not in state_dict:
            return
        restored = normalizer_from_dict(state_dict["normalizer"])
        changed = self._normalizer is not None and restored != self._normalizer
        self._normalizer = restored
        if changed:
            log.warning(
                "%s: statistics differ from the checkpoint's; using the checkpoint's", type(self).__name__
            )
            if self._datasets:
                self._build_datasets(None)

    def _check_nan(self, actions: np.ndarray, where: str, field: str) -> bool:
        """True if finite; False (skip) or raise for a non-finite action, per ``nan_policy``."""
        finite = np.isfinite(actions).all(axis=1)
        if finite.all():
            return True
        if self.nan_policy == "error":
            step = int(np.argmin(finite))
            raise DatasetFormatError(f"{where}: field '{field}' has a non-finite value at step {step}")
        return False


class EpisodeDataModule(VLADataModule):
    """Datamodule over an :class:`EpisodeReader` format (LIBERO, Bridge).

    Subclasses set the dataset name, allowed formats, gripper convention, default image keys,
    image orientation and augmentation.
    """

    dataset_name: str = ""
    formats: tuple[str, ...] = EPISODE_FORMATS
    gripper: GripperConvention = GripperConvention("signed")

    def __init__(
        self,
        root: str | Path,
        *,
        format: str | None = None,
        image_key: str | None = None,
        action_key: str | None = None,
        instruction_key: str | None = None,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        chunk_size: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(chunk_size=chunk_size, **kwargs)
        if format is not None and format not in self.formats:
            raise ValueError(f"{type(self).__name__}: format must be one of {self.formats}, got {format!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(root)
        self.format = format
        self.image_key = image_key
        self.action_key = action_key
        self.instruction_key = instruction_key
        self._empty_episodes: dict[str, list[str]] = {}  # split → sources of episodes without frames
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self._index: dict[str, dict[str, np.ndarray]] = {}
        self._readers: dict[str, EpisodeReader] = {}
        self._splits: dict[str, tuple[str, np.ndarray]] | None = None
        self._fingerprint_value: str | None = None
        self._rlds_val: bool | None = None

    # -- per-dataset hooks ----------------------------------------------------------------------
    def default_image_key(self, fmt: str) -> str | None:
        return None

    def rotate_images(self, reader: EpisodeReader) -> bool:
        """Whether frames must be rotated by 180° to be upright: the reader's
        ``stored_rotated_180`` attribute (``False`` if absent)."""
        return bool(getattr(reader, "stored_rotated_180", False))

    def train_transform(self) -> ImageTransform | None:
        return None

    # -- format and splits ----------------------------------------------------------------------
    @property
    def resolved_format(self) -> str:
        if self.format is None:
            self.format = detect_format(self.root, self.formats)
        return self.format

    def _uses_rlds_val(self) -> bool:
        if self._rlds_val is None:
            self._rlds_val = self.resolved_format == "rlds" and rlds_has_split(self.root, "val")
        return self._rlds_val

    def _reader(self, split: str) -> EpisodeReader:
        """The reader of an on-disk split (``"train"``, or ``"val"`` for RLDS with a val split)."""
        if split not in self._readers:
            fmt = self.resolved_format
            key = self.image_key or self.default_image_key(fmt)
            self._readers[split] = open_episode_reader(
                fmt,
                self.root,
                split=split,
                image_key=key,
                action_key=self.action_key,
                instruction_key=self.instruction_key,
            )
        return self._readers[split]

    def _split_name(self) -> str:
        if self._uses_rlds_val():
            return "rlds-train-val"
        return f"episodes-val{self.val_fraction:g}-seed{self.split_seed}"

    def _fingerprint(self) -> str:
        if self._fingerprint_value is None:
            root = resolve_rlds_root(self.root) if self.resolved_format == "rlds" else self.root
            files = cache.dataset_files(root, skip_dirs=("videos", "images"))
            # The keys choose what is indexed (RLDS camera skips depend on the image key), and
            # "index-2" retires indexes that skipped Bridge episodes on has_image_0 alone.
            keys = f"index-2|{self.image_key}|{self.action_key}|{self.instruction_key}"
            self._fingerprint_value = cache.fingerprint(files, root if root.is_dir() else root.parent, extra=keys)
        return self._fingerprint_value

    def _load_index(self, split: str) -> dict[str, np.ndarray]:
        """Lengths, raw actions and instructions of every episode of an on-disk split (cached)."""
        if split in self._index:
            return self._index[split]
        fmt = self.resolved_format
        name = f"{self.dataset_name}-{fmt}-{split}-{self._fingerprint()}"
        arrays = cache.load_arrays(self.root, name, self.cache_dir)
        if arrays is None:
            reader = self._reader(split)
            log.info(
                "%s: indexing %d episodes of %s (%s, %s split)",
                self.dataset_name,
                len(reader),
                self.root,
                fmt,
                split,
            )
            arrays = build_episode_index(reader)
            close = getattr(reader, "close", None)
            if callable(close):
                close()
            try:
                path = cache.save_arrays(self.root, name, arrays, self.cache_dir)
                log.info("%s: action index cached at %s", self.dataset_name, path)
            except OSError as err:
                log.warning("%s: could not cache the action index (%s)", self.dataset_name, err)
        self._index[split] = arrays
        return arrays

    def _episode_split(self) -> dict[str, tuple[str, np.ndarray]]:
        """split → (on-disk split, episode ids); NaN episodes filtered per ``nan_policy``."""
        if self._splits is None:
            self._splits = self._compute_episode_split()
        return self._splits

    def _compute_episode_split(self) -> dict[str, tuple[str, np.ndarray]]:
        if self._uses_rlds_val():
            out = {
                "train": ("train", np.arange(len(self._load_index("train")["lengths"]))),
                "val": ("val", np.arange(len(self._load_index("val")["lengths"]))),
            }
        else:
            count = len(self._load_index("train")["lengths"])
            order = np.random.default_rng(self.split_seed).permutation(count)
            n_val = round(count * self.val_fraction)
            if self.val_fraction > 0 and count > 1:
                n_val = min(max(n_val, 1), count - 1)
            out = {"train": ("train", np.sort(order[n_val:])), "val": ("train", np.sort(order[:n_val]))}
        return {name: (disk, self._finite_episodes(disk, ids, name)) for name, (disk, ids) in out.items()}

    def _finite_episodes(self, disk_split: str, episodes: np.ndarray, name: str = "train") -> np.ndarray:
        index = self._load_index(disk_split)
        offsets = np.concatenate([[0], np.cumsum(index["lengths"])])
        keep = []
        dropped = []
        empty = self._empty_episodes.setdefault(name, [])
        empty.clear()
        for ep in episodes:
            if index["lengths"][ep] == 0:  # no frames (e.g. a really blank RLDS camera): not a NaN skip
                empty.append(str(index["sources"][ep]))
                continue
            acts = index["actions"][offsets[ep] : offsets[ep + 1]]
            where = str(index["sources"][ep])
            if self._check_nan(acts, where, "actions"):
                keep.append(ep)
            else:
                dropped.append(where)
        if dropped:
            log.warning(
                "%s: skipped %d episode(s) with NaN/inf actions (%s split), e.g. %s",
                self.dataset_name,
                len(dropped),
                disk_split,
                ", ".join(dropped[:3]),
            )
        if empty:
            log.warning(
                "%s: skipped %d episode(s) without frames (blank primary camera or no steps) in the %s split, e.g. %s",
                self.dataset_name,
                len(empty),
                name,
                ", ".join(empty[:3]),
            )
        return np.asarray(keep, dtype=np.int64)

    # -- statistics ---------------------------------------------------------------------------
    def stats_key(self) -> str:
        return f"{self.dataset_name}/{self.resolved_format}/{self._split_name()}/{self._fingerprint()}"

    def _compute_normalizer(self) -> ActionNormalizer:
        key = self.stats_key()
        entry = cache.load_stats_entry(self.root, key, self.cache_dir)
        if entry is not None:
            return normalizer_from_dict(entry["normalizer"])
        disk, episodes = self._episode_split()["train"]
        index = self._load_index(disk)
        if len(episodes) == 0:
            empty = self._empty_episodes.get("train", [])
            if empty:
                raise DatasetFormatError(
                    f"{self.root}: no training episodes with frames ({len(empty)} skipped for a blank primary "
                    f"camera or no steps, e.g. {empty[0]})"
                )
            raise DatasetFormatError(f"{self.root}: no training episodes with finite actions")
        offsets = np.concatenate([[0], np.cumsum(index["lengths"])])
        raw = np.concatenate([index["actions"][offsets[e] : offsets[e + 1]] for e in episodes])
        normalizer = QuantileNormalizer.from_actions(raw, gripper=self.gripper)
        entry = {
            "dataset": self.dataset_name,
            "format": self.resolved_format,
            "split": self._split_name(),
            "num_episodes": len(episodes),
            "num_steps": len(raw),
            "normalizer": normalizer.to_dict(),
        }
        try:
            path = cache.save_stats_entry(self.root, key, entry, self.cache_dir)
            log.info("%s: action statistics cached at %s", self.dataset_name, path)
        except OSError as err:
            log.warning("%s: could not cache action statistics (%s)", self.dataset_name, err)
        return normalizer

    # -- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build (once, on one process per node) the cached action index and statistics."""
        self._episode_split()
        _ = self.normalizer

    def _build_datasets(self, stage: str | None) -> None:
        splits = self._episode_split()
        normalizer = self.normalizer
        wanted = ["train", "val"] if stage in (None, "fit") else ["val"]
        for name in wanted:
            disk, episodes = splits[name]
            index = self._load_index(disk)
            offsets = np.concatenate([[0], np.cumsum(index["lengths"])])
            lengths = index["lengths"][episodes]
            actions = (
                np.concatenate([index["actions"][offsets[e] : offsets[e + 1]] for e in episodes])
                if len(episodes)
                else np.zeros((0, 7), np.float32)
            )
            reader = self._reader(disk)
            close = getattr(reader, "close", None)
            if callable(close):
                close()  # workers reopen their own handles
            self._datasets[name] = EpisodeDataset(
                reader,
                episodes,
                rotate=self.rotate_images(reader),
                lengths=lengths,
                row_offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths,
                actions=prepare_actions(actions, normalizer),
                instructions=[str(index["instructions"][e]) for e in episodes],
                chunk_size=self.chunk_size,
                transform=self.train_transform() if (name == "train" and self.image_augmentation) else None,
                seed=self.seed,
            )


def build_episode_index(reader: EpisodeReader) -> dict[str, np.ndarray]:
    """One pass over a reader: lengths, raw float32 actions (concatenated), instructions and
    a printable source of every episode. Episodes a reader reports with length 0 (e.g. RLDS
    Bridge episodes without the primary camera) are kept in the index and never sampled."""
    lengths, actions, instructions, sources = [], [], [], []
    for ep in range(len(reader)):
        where = describe_episode(reader, ep)
        acts = check_actions(reader.actions(ep), where, "actions")
        length = int(reader.episode_length(ep))
        if len(acts) != length:
            raise DatasetFormatError(
                f"{where}: field 'actions' has {len(acts)} steps but the episode has {length} frames"
            )
        lengths.append(length)
        actions.append(acts)
        instructions.append(str(reader.instruction(ep)))
        sources.append(where)
    return {
        "lengths": np.asarray(lengths, dtype=np.int64),
        "actions": np.concatenate(actions) if actions else np.zeros((0, 7), np.float32),
        "instructions": np.asarray(instructions, dtype=np.str_),
        "sources": np.asarray(sources, dtype=np.str_),
    }


__all__ = [
    "NAN_POLICIES",
    "ChunkDataset",
    "EpisodeDataModule",
    "EpisodeDataset",
    "EpochDistributedSampler",
    "VLADataModule",
    "build_episode_index",
    "chunk_rows",
    "prepare_actions",
    "unpack_key",
]

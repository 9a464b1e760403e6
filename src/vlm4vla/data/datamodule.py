"""The VLA LightningDataModules: :class:`VLADataModule` (options, dataloaders, checkpointed
normaliser) and :class:`EpisodeDataModule`, the datamodule over an episode format used by
LIBERO and Bridge.

The training DataLoader is a :class:`~vlm4vla.data.loader.ResumableDataLoader` over an
:class:`~vlm4vla.data.loader.EpochDistributedSampler`. Validation uses plain integer indices (no
augmentation) and a sequential sampler, which Lightning replaces by a non-shuffling
``DistributedSampler`` under DDP/FSDP.

NaN actions
-----------
With ``nan_policy="skip"`` (default) an episode (LIBERO/Bridge) or language window (CALVIN)
containing a non-finite action is dropped and a warning logs how many were dropped and where
the first ones are. ``nan_policy="error"`` raises a :class:`DatasetFormatError` naming the
file and field instead.

Options that change what is trained on
--------------------------------------
Every such option is an ``__init__`` argument (so it is in the LightningCLI config saved with a
run) and is also written into each checkpoint's datamodule state (``data_options``, next to the
normaliser); a resumed run whose options differ from the checkpoint's is warned about. Cached
indexes and statistics are keyed on the options that change them (the episode transform and
state key); the normaliser's second stage (``action_clip``) travels inside the normaliser.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from vlm4vla.data import cache
from vlm4vla.data.collate import InputsFn, VLACollator
from vlm4vla.data.dataset import ChunkDataset, EpisodeDataset, prepare_actions
from vlm4vla.data.episode_transforms import EpisodeTransform
from vlm4vla.data.episodes import HOLDOUTS, EpisodeIndex, build_episode_index, holdout_split
from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader, close_reader
from vlm4vla.data.formats.detect import detect_format, open_episode_reader
from vlm4vla.data.formats.registry import EpisodeFormat, episode_formats, get_format
from vlm4vla.data.loader import EpochDistributedSampler, ResumableDataLoader
from vlm4vla.data.transforms import ImageTransform
from vlm4vla.errors import ConfigError
from vlm4vla.policy.action_space import (
    RELEASED_ACTION_CLIP,
    ActionNormalizer,
    GripperConvention,
    QuantileNormalizer,
    check_action_clip,
    normalizer_from_dict,
)

log = logging.getLogger(__name__)

NAN_POLICIES = ("skip", "error")


class VLADataModule(pl.LightningDataModule, abc.ABC):
    """Common options and dataloaders. Subclasses build ``self._datasets`` in :meth:`setup`."""

    #: Dataset name (``libero``, ``bridge``, ``calvin``), recorded in bundles' image pipeline.
    dataset_name: str = ""

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
        image_size: int = 224,
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
        self.image_size = int(image_size)  # side the training augmentation resizes to first (released: 224)
        self._normalizer: ActionNormalizer | None = None
        self._datasets: dict[str, ChunkDataset] = {}
        self._source_size: list[int] | None = None

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
        model_size = getattr(inputs_fn, "image_size", None)
        if self.image_augmentation and model_size is not None and int(model_size) != self.image_size:
            raise ConfigError(
                f"image_size: the model takes {model_size}² images but the datamodule's augmentation "
                f"resizes to {self.image_size}²; set data.init_args.image_size: {model_size}"
            )
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
    def data_options(self) -> dict[str, Any]:
        """The options that change the training data (JSON values), recorded in checkpoints."""
        return {}

    def crop_scale_trained(self) -> float | None:
        """Area of the random resized crop the training images went through (None: no crop)."""
        return None

    def source_image_size(self) -> list[int] | None:
        """(height, width) of the stored training frames (None before `setup` or without frames);
        read from disk once (it is recorded at every checkpoint save)."""
        if self._source_size is None:
            dataset = self._datasets.get("train")
            if dataset is None or len(dataset) == 0:
                return None
            self._source_size = [int(v) for v in np.asarray(dataset.load_image(0, 0)).shape[:2]]
        return list(self._source_size)

    def image_pipeline(self) -> dict[str, Any]:
        """What the training images went through, recorded in every bundle so that evaluation feeds
        the policy the same (e.g. LIBERO renders at ``source_size`` and centre-crops when training
        used the random crop): dataset, stored frame size, training resize, crop area."""
        return {
            "dataset": self.dataset_name,
            "source_size": self.source_image_size(),
            "resize_to": self.image_size,
            "augmentation": self.image_augmentation,
            "crop_scale": self.crop_scale_trained() if self.image_augmentation else None,
        }

    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning into every checkpoint: the normaliser, for evaluation to invert, the
        data options it was trained with and the image pipeline (both recorded in bundles)."""
        state = {"normalizer": self.normalizer.to_dict(), "data_options": self.data_options()}
        if self._datasets:
            state["image_pipeline"] = self.image_pipeline()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Adopt the checkpoint's normaliser (re-normalising built datasets if it differs)."""
        saved_options = state_dict.get("data_options")
        if saved_options is not None and dict(saved_options) != self.data_options():
            log.warning(
                "%s: the checkpoint was trained with data options %s, this run uses %s",
                type(self).__name__,
                dict(saved_options),
                self.data_options(),
            )
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
    image orientation and augmentation. What differs between formats (where the data files
    are, whether the dataset has its own val split) comes from the format's
    :class:`~vlm4vla.data.formats.registry.EpisodeFormat`.

    Args:
        root, format, image_key, action_key, instruction_key: where and what to read (see the
            subclasses).
        state_key: observation state read by transforms that relabel from states (``None``: the
            reader's default).
        val_fraction: share of the episodes held out when the dataset has no ``val`` split of its
            own (0: train on every episode, no validation).
        split_seed: seed of the ``"random"`` holdout.
        holdout: ``"random"`` (default) or ``"last"``: the last ``val_fraction`` of the episodes in
            reader order, as the released code's TFDS slicing ``train[:95%]`` / ``train[95%:]``.
        action_clip: the released second normalisation stage, clip ±bound and divide by it after
            q01/q99 (default 0.65; ``None``: q01/q99 only). Stored in the normaliser.
        chunk_size and the rest: see :class:`VLADataModule`.
    """

    #: Formats this dataset may be read from; None: every registered episode format.
    formats: tuple[str, ...] | None = None
    gripper: GripperConvention = GripperConvention("signed")

    def __init__(
        self,
        root: str | Path,
        *,
        format: str | None = None,
        image_key: str | None = None,
        action_key: str | None = None,
        instruction_key: str | None = None,
        state_key: str | None = None,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        holdout: str = "random",
        chunk_size: int = 4,
        action_clip: float | None = RELEASED_ACTION_CLIP,
        **kwargs: Any,
    ) -> None:
        super().__init__(chunk_size=chunk_size, **kwargs)
        if format is not None and format not in self.allowed_formats():
            raise ValueError(f"{type(self).__name__}: format must be one of {self.allowed_formats()}, got {format!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if holdout not in HOLDOUTS:
            raise ValueError(f"{type(self).__name__}: holdout must be one of {HOLDOUTS}, got {holdout!r}")
        self.root = Path(root)
        self.format = format
        self.image_key = image_key
        self.action_key = action_key
        self.instruction_key = instruction_key
        self.state_key = state_key
        self.action_clip = check_action_clip(action_clip)
        self._empty_episodes: dict[str, list[str]] = {}  # split → sources of episodes without frames
        self._unlabeled_episodes: dict[str, list[str]] = {}  # split → sources skipped for no instruction
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.holdout = holdout
        self._index: dict[str, EpisodeIndex] = {}
        self._readers: dict[str, EpisodeReader] = {}
        self._splits: dict[str, tuple[str, np.ndarray]] | None = None
        self._fingerprint_value: str | None = None
        self._disk_val: bool | None = None

    # -- per-dataset hooks ----------------------------------------------------------------------
    def default_image_key(self, fmt: str) -> str | None:
        return None

    def rotate_images(self, reader: EpisodeReader) -> bool:
        """Whether frames must be rotated by 180° to be upright: the reader's
        ``stored_rotated_180`` attribute (``False`` if absent)."""
        return bool(getattr(reader, "stored_rotated_180", False))

    def train_transform(self) -> ImageTransform | None:
        return None

    def episode_transform(self) -> EpisodeTransform | None:
        """The action transform applied to every episode when the index is built (None: raw)."""
        return None

    def data_options(self) -> dict[str, Any]:
        transform = self.episode_transform()
        return {
            "episode_transform": transform.name if transform is not None else None,
            "state_key": self.state_key,
            "action_clip": self.action_clip,
            "val_fraction": self.val_fraction,
            "holdout": self.holdout,
        }

    # -- format and splits ----------------------------------------------------------------------
    def allowed_formats(self) -> tuple[str, ...]:
        return self.formats if self.formats is not None else episode_formats()

    @property
    def resolved_format(self) -> str:
        if self.format is None:
            self.format = detect_format(self.root, self.allowed_formats())
        return self.format

    @property
    def _format_spec(self) -> EpisodeFormat:
        return get_format(self.resolved_format)

    def _has_disk_val(self) -> bool:
        """Whether the dataset ships its own ``val`` split (RLDS), used instead of a holdout."""
        if self._disk_val is None:
            self._disk_val = self._format_spec.has_split(self.root, "val")
        return self._disk_val

    def _reader(self, split: str) -> EpisodeReader:
        """The reader of an on-disk split (``"train"``, or ``"val"`` when the dataset has one)."""
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
        if self._has_disk_val():
            return f"{self.resolved_format}-train-val"
        if self.holdout == "last":
            return f"episodes-val{self.val_fraction:g}-last"
        return f"episodes-val{self.val_fraction:g}-seed{self.split_seed}"

    def _fingerprint(self) -> str:
        if self._fingerprint_value is None:
            root = self._format_spec.data_root(self.root)
            # LeRobot's media directories are not hashed: the index holds no pixels.
            files = cache.dataset_files(root, skip_dirs=("videos", "images"))
            # The keys choose what is indexed (RLDS camera skips depend on the image key; the
            # episode transform and its states change the actions and steps). "index-3" retires
            # indexes without per-row steps (and "index-2" those that skipped Bridge episodes on
            # has_image_0 alone).
            transform = self.episode_transform()
            keys = (
                f"index-3|{self.image_key}|{self.action_key}|{self.instruction_key}"
                f"|{transform.name if transform is not None else 'raw'}|{self.state_key}"
            )
            self._fingerprint_value = cache.fingerprint(files, root if root.is_dir() else root.parent, extra=keys)
        return self._fingerprint_value

    def _load_index(self, split: str) -> EpisodeIndex:
        """Lengths, raw actions and instructions of every episode of an on-disk split (cached)."""
        if split in self._index:
            return self._index[split]
        fmt = self.resolved_format
        name = f"{self.dataset_name}-{fmt}-{split}-{self._fingerprint()}"
        arrays = cache.load_arrays(self.root, name, self.cache_dir)
        if arrays is not None:
            index = EpisodeIndex.from_arrays(arrays)
        else:
            reader = self._reader(split)
            log.info(
                "%s: indexing %d episodes of %s (%s, %s split)",
                self.dataset_name,
                len(reader),
                self.root,
                fmt,
                split,
            )
            index = build_episode_index(reader, self.episode_transform(), state_key=self.state_key)
            close_reader(reader)
            try:
                path = cache.save_arrays(self.root, name, index.to_arrays(), self.cache_dir)
                log.info("%s: action index cached at %s", self.dataset_name, path)
            except OSError as err:
                log.warning("%s: could not cache the action index (%s)", self.dataset_name, err)
        self._index[split] = index
        return index

    def episode_index(self, split: str = "train") -> EpisodeIndex:
        """The episode index of an on-disk split (``"train"``, or ``"val"`` when the dataset has one):
        every episode's actions *before* normalisation (after the episode transform, e.g.
        ``bridge_orig``) and the reader step of each row. Built or loaded from the cache."""
        return self._load_index(split)

    def _episode_split(self) -> dict[str, tuple[str, np.ndarray]]:
        """split → (on-disk split, episode ids); NaN episodes filtered per ``nan_policy``."""
        if self._splits is None:
            self._splits = self._compute_episode_split()
        return self._splits

    def _compute_episode_split(self) -> dict[str, tuple[str, np.ndarray]]:
        if self._has_disk_val():
            out = {
                "train": ("train", np.arange(len(self._load_index("train")))),
                "val": ("val", np.arange(len(self._load_index("val")))),
            }
        else:
            train, val = holdout_split(
                len(self._load_index("train")), self.val_fraction, self.split_seed, self.holdout
            )
            out = {"train": ("train", train), "val": ("train", val)}
        return {name: (disk, self._finite_episodes(disk, ids, name)) for name, (disk, ids) in out.items()}

    def _finite_episodes(self, disk_split: str, episodes: np.ndarray, name: str = "train") -> np.ndarray:
        index = self._load_index(disk_split)
        keep = []
        dropped = []
        empty = self._empty_episodes.setdefault(name, [])
        empty.clear()
        unlabeled = self._unlabeled_episodes.setdefault(name, [])
        unlabeled.clear()
        transform = self.episode_transform()
        skip_unlabeled = transform is not None and transform.skip_unlabeled
        for ep in episodes:
            if skip_unlabeled and not str(index.instructions[ep]).strip():
                unlabeled.append(str(index.sources[ep]))
                continue
            if index.lengths[ep] == 0:  # no frames (e.g. a really blank RLDS camera): not a NaN skip
                empty.append(str(index.sources[ep]))
                continue
            where = str(index.sources[ep])
            if self._check_nan(index.episode_actions(ep), where, "actions"):
                keep.append(ep)
            else:
                dropped.append(where)
        self._warn_skipped(dropped, f"with NaN/inf actions ({disk_split} split)")
        self._warn_skipped(empty, f"without frames (blank primary camera or no steps) in the {name} split")
        transform_name = transform.name if transform is not None else ""
        self._warn_skipped(unlabeled, f"without a language instruction in the {name} split ({transform_name})")
        return np.asarray(keep, dtype=np.int64)

    def _warn_skipped(self, sources: list[str], why: str) -> None:
        """One log line for the episodes skipped for one reason, with the first few sources."""
        if sources:
            log.warning("%s: skipped %d episode(s) %s, e.g. %s", self.dataset_name, len(sources), why,
                        ", ".join(sources[:3]))

    # -- statistics ---------------------------------------------------------------------------
    def stats_key(self) -> str:
        return f"{self.dataset_name}/{self.resolved_format}/{self._split_name()}/{self._fingerprint()}"

    def _compute_normalizer(self) -> ActionNormalizer:
        key = self.stats_key()
        entry = cache.load_stats_entry(self.root, key, self.cache_dir)
        if entry is not None:
            return self._with_action_clip(normalizer_from_dict(entry["normalizer"]))
        disk, episodes = self._episode_split()["train"]
        index = self._load_index(disk)
        if len(episodes) == 0:
            empty = self._empty_episodes.get("train", [])
            unlabeled = self._unlabeled_episodes.get("train", [])
            if empty or unlabeled:
                reasons = [f"{len(empty)} skipped for a blank primary camera or no steps"] if empty else []
                reasons += [f"{len(unlabeled)} for no instruction"] if unlabeled else []
                what = "usable training episodes" if unlabeled else "training episodes with frames"
                raise DatasetFormatError(
                    f"{self.root}: no {what} ({', '.join(reasons)}, e.g. {(empty or unlabeled)[0]})"
                )
            raise DatasetFormatError(f"{self.root}: no training episodes with finite actions")
        raw = index.take(episodes).actions
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
        return self._with_action_clip(normalizer)

    def _with_action_clip(self, normalizer: ActionNormalizer) -> ActionNormalizer:
        # The cache holds the statistics only: the second stage is this datamodule's option.
        if isinstance(normalizer, QuantileNormalizer):
            return normalizer.with_action_clip(self.action_clip)
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
            selected = self._load_index(disk).take(episodes)
            reader = self._reader(disk)
            close_reader(reader)  # workers reopen their own handles
            self._datasets[name] = EpisodeDataset(
                reader,
                episodes,
                rotate=self.rotate_images(reader),
                frame_steps=selected.steps,
                lengths=selected.lengths,
                row_offsets=selected.offsets[:-1],
                actions=prepare_actions(selected.actions, normalizer),
                instructions=[str(text) for text in selected.instructions],
                chunk_size=self.chunk_size,
                transform=self.train_transform() if (name == "train" and self.image_augmentation) else None,
                seed=self.seed,
            )


__all__ = ["NAN_POLICIES", "EpisodeDataModule", "VLADataModule"]

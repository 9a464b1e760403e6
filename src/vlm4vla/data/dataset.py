"""Map-style chunk datasets: every frame of a set of segments (episodes or language windows)
with the next N prepared actions and their validity mask.

A training sample is fetched with the key ``(index, epoch)`` and its augmentation is drawn from
``sample_rng(seed, epoch, index)``, so a batch never depends on the number of workers.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vlm4vla.data.episodes import segment_offsets
from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader, describe_episode
from vlm4vla.data.transforms import ImageTransform, sample_rng
from vlm4vla.imaging import rotate_180
from vlm4vla.policy.action_space import ActionNormalizer

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
        self._starts = segment_offsets(self.lengths)  # first sample index of each segment, and the total

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
    """Every action row of a set of episodes of an :class:`EpisodeReader`, with its frame.

    ``frame_steps`` (aligned with ``actions``) gives the reader step of each row, for episodes
    whose rows are not their frames one to one (``bridge_orig`` drops the first and last step,
    ``drop_noops`` the no-ops); ``None`` means row ``i`` of an episode is its step ``i``.
    """

    def __init__(
        self,
        reader: EpisodeReader,
        episodes: np.ndarray,
        *,
        rotate: bool = False,
        frame_steps: np.ndarray | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.reader = reader
        self.episodes = np.asarray(episodes, dtype=np.int64)
        self.rotate = bool(rotate)
        self.frame_steps = None if frame_steps is None else np.asarray(frame_steps, dtype=np.int64)

    def reader_step(self, segment: int, step: int) -> int:
        """The reader step (on-disk frame) of a segment's ``step``-th row."""
        if self.frame_steps is None:
            return int(step)
        return int(self.frame_steps[int(self.row_offsets[segment]) + step])

    def load_image(self, segment: int, step: int) -> np.ndarray:
        episode = int(self.episodes[segment])
        step = self.reader_step(segment, step)
        image = np.asarray(self.reader.frame(episode, step))
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DatasetFormatError(
                f"{describe_episode(self.reader, episode)}: image at step {step} is {image.dtype} "
                f"{image.shape}, expected uint8 (H, W, 3)"
            )
        return rotate_180(image) if self.rotate else image

    def metadata(self, segment: int, step: int) -> dict[str, int]:
        return {"episode_index": int(self.episodes[segment]), "frame_index": self.reader_step(segment, step)}


__all__ = ["ChunkDataset", "EpisodeDataset", "SampleKey", "chunk_rows", "prepare_actions", "unpack_key"]

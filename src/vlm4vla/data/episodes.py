"""The episode index of a reader split: per-episode lengths, actions (raw, or after an
:class:`~vlm4vla.data.episode_transforms.EpisodeTransform`), the reader step of every action
row, instructions and sources, built in one pass and stored as plain arrays (the datamodules
cache them); and the seeded episode-level train/val split. Needs neither torch nor Lightning.

Episode ``e``'s actions are rows ``offsets[e]:offsets[e + 1]`` of the concatenated ``actions``;
``steps`` holds, for each row, the reader step whose frame goes with it (``0 … T-1`` without a
transform; e.g. ``1 … T-2`` after ``bridge_orig``, the kept steps after ``drop_noops``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vlm4vla.data.episode_transforms import EpisodeTransform
from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader, check_actions, describe_episode


def segment_offsets(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """Where each of back-to-back segments of ``lengths`` starts, and the total: int64 (S + 1,)."""
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


@dataclass(frozen=True, eq=False)
class EpisodeIndex:
    """What setup needs of every episode of a split, without reading an image."""

    lengths: np.ndarray  # (E,) int64 frames per episode (0: never sampled, e.g. a blank RLDS camera)
    actions: np.ndarray  # (sum(lengths), 7) float32 actions, episode after episode
    instructions: np.ndarray  # (E,) str
    sources: np.ndarray  # (E,) str, where each episode lives (for messages)
    steps: np.ndarray  # (sum(lengths),) int64 reader step (frame) of each action row

    FIELDS = ("lengths", "actions", "instructions", "sources", "steps")

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> EpisodeIndex:
        """From :meth:`to_arrays` (e.g. a cached npz)."""
        fields = {name: arrays[name] for name in cls.FIELDS if name in arrays}
        if "steps" not in fields:  # an index written before transforms existed: identity steps
            fields["steps"] = np.concatenate(
                [np.zeros(0, np.int64), *(np.arange(n, dtype=np.int64) for n in arrays["lengths"])]
            )
        return cls(**fields)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def __len__(self) -> int:
        return len(self.lengths)

    @cached_property
    def offsets(self) -> np.ndarray:
        """(E + 1,) first action row of each episode, and the total."""
        return segment_offsets(self.lengths)

    def episode_actions(self, episode: int) -> np.ndarray:
        return self.actions[self.offsets[episode] : self.offsets[episode + 1]]

    def episode_steps(self, episode: int) -> np.ndarray:
        return self.steps[self.offsets[episode] : self.offsets[episode + 1]]

    def take(self, episodes: Sequence[int] | np.ndarray) -> EpisodeIndex:
        """The index of ``episodes`` only, in that order, their actions back to back."""
        episodes = np.asarray(episodes, dtype=np.int64)
        if len(episodes):
            actions = np.concatenate([self.episode_actions(e) for e in episodes])
            steps = np.concatenate([self.episode_steps(e) for e in episodes])
        else:
            actions, steps = np.zeros((0, 7), np.float32), np.zeros(0, np.int64)
        return EpisodeIndex(
            self.lengths[episodes], actions, self.instructions[episodes], self.sources[episodes], steps
        )


def read_states(reader: EpisodeReader, episode: int, key: str | None = None) -> np.ndarray:
    """An episode's observation states, float32 ``(T, D)`` with ``D >= 6``, through the reader's
    optional ``states(episode, key)`` method; one error naming the reader or the field otherwise."""
    states_fn = getattr(reader, "states", None)
    where = describe_episode(reader, episode)
    if not callable(states_fn):
        raise DatasetFormatError(
            f"{where}: this transform needs observation states, which the {type(reader).__name__} reader does not provide"
        )
    states = np.asarray(states_fn(episode, key))
    if states.ndim != 2 or states.shape[1] < 6:
        raise DatasetFormatError(f"{where}: states have shape {tuple(states.shape)}, expected (T, >= 6)")
    return states.astype(np.float32, copy=False)


def build_episode_index(
    reader: EpisodeReader, transform: EpisodeTransform | None = None, *, state_key: str | None = None
) -> EpisodeIndex:
    """One pass over a reader, applying ``transform`` to every episode with frames. Episodes a
    reader reports with length 0 (e.g. RLDS Bridge episodes without the primary camera) and
    those a transform leaves empty are kept in the index with length 0 and never sampled."""
    lengths, actions, steps, instructions, sources = [], [], [], [], []
    for ep in range(len(reader)):
        where = describe_episode(reader, ep)
        acts = check_actions(reader.actions(ep), where, "actions")
        length = int(reader.episode_length(ep))
        if len(acts) != length:
            raise DatasetFormatError(
                f"{where}: field 'actions' has {len(acts)} steps but the episode has {length} frames"
            )
        rows = np.arange(length, dtype=np.int64)
        if transform is not None and length:
            states = read_states(reader, ep, state_key) if transform.needs_states else None
            if states is not None and len(states) != length:
                raise DatasetFormatError(
                    f"{where}: states have {len(states)} steps but the episode has {length} frames"
                )
            acts, rows = transform(acts, states)
        lengths.append(len(acts))
        actions.append(np.asarray(acts, dtype=np.float32))
        steps.append(np.asarray(rows, dtype=np.int64))
        instructions.append(str(reader.instruction(ep)))
        sources.append(where)
    return EpisodeIndex(
        lengths=np.asarray(lengths, dtype=np.int64),
        actions=np.concatenate(actions) if actions else np.zeros((0, 7), np.float32),
        instructions=np.asarray(instructions, dtype=np.str_),
        sources=np.asarray(sources, dtype=np.str_),
        steps=np.concatenate(steps) if steps else np.zeros(0, np.int64),
    )


HOLDOUTS = ("random", "last")


def holdout_split(count: int, val_fraction: float, seed: int, mode: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) episode ids.

    ``"random"``: ``round(count * val_fraction)`` held out at random with ``seed``, at least one and
    never all of them when ``val_fraction > 0`` and ``count > 1``. ``"last"``: the episodes after
    the first ``round(count * (1 - val_fraction))`` in reader order, as TFDS's percent slicing
    ``train[:95%]`` / ``train[95%:]`` does; this is what the released code trains LIBERO on
    (OpenVLA's ``make_dataset_from_rlds`` when a dataset has no ``val`` split).
    """
    if mode not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {HOLDOUTS}, got {mode!r}")
    if mode == "last":
        # TFDS rounds the percent boundary to the closest example: round(95 * count / 100)
        boundary = int(round(round(100 * (1 - val_fraction), 9) * count / 100))
        return np.arange(boundary, dtype=np.int64), np.arange(boundary, count, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(count)
    n_val = round(count * val_fraction)
    if val_fraction > 0 and count > 1:
        n_val = min(max(n_val, 1), count - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


__all__ = ["HOLDOUTS", "EpisodeIndex", "build_episode_index", "holdout_split", "read_states", "segment_offsets"]

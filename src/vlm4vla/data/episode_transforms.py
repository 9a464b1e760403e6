"""Per-episode action transforms, applied once when the episode index is built (so statistics,
the cached index and the samples all see the transformed actions).

A transform maps an episode's raw ``(T, 7)`` actions (and, if it needs them, its observation
states) to new actions and the reader step each new row belongs to, so the frame shown with
row ``i`` is ``reader.frame(episode, steps[i])``:

- :class:`BridgeOrig` (``transform="bridge_orig"`` of :class:`~vlm4vla.data.BridgeDataModule`):
  OpenVLA's ``bridge_orig`` standardisation, which the released VLM4VLA code trains on.
- :class:`DropNoops` (``drop_noops=True`` of :class:`~vlm4vla.data.LiberoDataModule`): the
  no-op filter of OpenVLA's LIBERO regeneration script, for the original HDF5 demos.

Implemented from the descriptions in openvla/openvla (not copied):
``prismatic/vla/datasets/rlds/oxe/transforms.py`` (``bridge_orig_dataset_transform``),
``prismatic/vla/datasets/rlds/utils/data_utils.py`` (``binarize_gripper_actions``,
``relabel_bridge_actions``) and ``experiments/robot/libero/regenerate_libero_dataset.py``
(``is_noop``).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

GRIPPER_OPEN_ABOVE = 0.95
GRIPPER_CLOSED_BELOW = 0.05
NOOP_THRESHOLD = 1e-4


def binarize_gripper(values: np.ndarray) -> np.ndarray:
    """Absolute gripper openings → 0/1 with hysteresis (OpenVLA ``binarize_gripper_actions``).

    Above 0.95 is open (1), below 0.05 closed (0); a value in between takes the next stable
    value after it (the state the transition ends in). A run of in-between values at the end
    of the episode has no stable value after it and keeps the raw *last* value, as OpenVLA's
    reverse scan starts from ``actions[-1]``.
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    n = len(values)
    if n == 0:
        return values.copy()
    is_open = values > GRIPPER_OPEN_ABOVE
    stable = is_open | (values < GRIPPER_CLOSED_BELOW)
    # index of the first stable value at or after each step (n where there is none)
    positions = np.where(stable, np.arange(n), n)
    following = np.minimum.accumulate(positions[::-1])[::-1]
    found = following < n
    return np.where(found, is_open[np.minimum(following, n - 1)], values[-1]).astype(np.float32)


def relabel_bridge_actions(actions: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Arm actions from the reached states, ``state[t+1, :6] - state[t, :6]``, gripper kept;
    the last step has no next state and is dropped: ``(T, 7)`` → ``(T - 1, 7)``."""
    actions = np.asarray(actions, dtype=np.float32)
    states = np.asarray(states, dtype=np.float32)
    movement = states[1:, :6] - states[:-1, :6]
    return np.concatenate([movement, actions[:-1, 6:7]], axis=1)


def noop_kept_steps(actions: np.ndarray, threshold: float = NOOP_THRESHOLD) -> np.ndarray:
    """Steps kept by OpenVLA's LIBERO no-op filter.

    A step is a no-op when the norm of its 6 arm dims is below ``threshold`` and its gripper
    equals the gripper of the previous *kept* step; while no step has been kept yet, the arm
    criterion alone decides (the script compares with the last action it has written).
    """
    actions = np.asarray(actions)
    small = np.linalg.norm(actions[:, :6].astype(np.float64), axis=1) < threshold
    kept: list[int] = []
    for t in range(len(actions)):
        if small[t] and (not kept or actions[t, 6] == actions[kept[-1], 6]):
            continue
        kept.append(t)
    return np.asarray(kept, dtype=np.int64)


class EpisodeTransform(abc.ABC):
    """An action transform of whole episodes (see the module docstring)."""

    #: Identifies the transform in cache keys: change it when the output changes.
    name: ClassVar[str] = ""
    #: Whether :meth:`__call__` needs the episode's observation states.
    needs_states: ClassVar[bool] = False
    #: Whether episodes without a language instruction are left out (counted and logged).
    skip_unlabeled: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, actions: np.ndarray, states: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Raw float32 ``(T, 7)`` actions (and ``(T, D)`` states) → new float32 ``(T', 7)``
        actions and the int64 ``(T',)`` reader step of each new row."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BridgeOrig(EpisodeTransform):
    """OpenVLA's ``bridge_orig`` standardisation of BridgeData V2, in OpenVLA's order:

    1. drop step 0 (its action is all zeros in the original Bridge data);
    2. binarise the gripper with :func:`binarize_gripper` (on steps 1..T-1, so the last step
       still decides a trailing transition before it is dropped);
    3. relabel the arm from the states (:func:`relabel_bridge_actions`), dropping the last step.

    A ``T``-step episode becomes ``T - 2`` rows showing frames ``1 … T-2``. Episodes without
    an instruction are skipped, as the released pipeline's ``skip_unlabeled=True`` does.
    """

    name = "bridge_orig"
    needs_states = True
    skip_unlabeled = True

    def __call__(self, actions: np.ndarray, states: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if states is None:
            raise ValueError("bridge_orig needs the episode's observation states")
        if len(actions) < 3:  # nothing left after dropping the first and the last step
            return np.zeros((0, 7), np.float32), np.zeros(0, np.int64)
        moved = np.array(actions[1:], dtype=np.float32)
        moved[:, 6] = binarize_gripper(moved[:, 6])
        relabelled = relabel_bridge_actions(moved, states[1:])
        return relabelled, np.arange(1, len(actions) - 1, dtype=np.int64)


class DropNoops(EpisodeTransform):
    """OpenVLA's LIBERO no-op filter (:func:`noop_kept_steps`): frames and actions of no-op steps
    are dropped together."""

    name = "drop_noops"

    def __call__(self, actions: np.ndarray, states: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        kept = noop_kept_steps(actions)
        return np.ascontiguousarray(actions[kept], dtype=np.float32), kept


#: Episode transforms by the name a datamodule option gives.
EPISODE_TRANSFORMS: dict[str, type[EpisodeTransform]] = {"bridge_orig": BridgeOrig, "drop_noops": DropNoops}


__all__ = [
    "EPISODE_TRANSFORMS",
    "BridgeOrig",
    "DropNoops",
    "EpisodeTransform",
    "binarize_gripper",
    "noop_kept_steps",
    "relabel_bridge_actions",
]

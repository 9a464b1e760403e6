"""Chunk execution: how many of the policy's N predicted actions run before the next query.

``full`` executes the whole chunk, ``half`` executes ``max(1, N // 2)`` and ``single`` one
action (N=10 → 10/5/1, N=4 → 4/2/1). Each env owns an `ActionQueue`: it is refilled when empty
and cleared at every episode or subtask reset, so no action of one episode leaks into the next.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from vlm4vla.errors import ConfigError

MODES: tuple[str, ...] = ("full", "half", "single")
"""Chunk modes in the order of the best-pick tie-break (fewest policy queries first)."""


def steps_per_query(mode: str, chunk_size: int) -> int:
    """Number of actions executed per policy query in ``mode`` for a chunk of ``chunk_size``."""
    n = int(chunk_size)
    if n < 1:
        raise ConfigError(f"chunk_size: must be ≥ 1, got {chunk_size}")
    if mode == "full":
        return n
    if mode == "half":
        return max(1, n // 2)
    if mode == "single":
        return 1
    raise ConfigError(f"mode: unknown chunk mode {mode!r}; expected one of {', '.join(MODES)}")


def parse_modes(text: str) -> list[str]:
    """``"full,half"`` → ``["full", "half"]`` in canonical order, duplicates removed."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ConfigError("--modes: empty; expected a comma-separated subset of full,half,single")
    unknown = [m for m in names if m not in MODES]
    if unknown:
        raise ConfigError(f"--modes: unknown mode(s) {', '.join(unknown)}; expected a subset of {','.join(MODES)}")
    return [m for m in MODES if m in names]


class ActionQueue:
    """FIFO of pending actions of one env; ``push`` keeps the first ``steps`` actions of a chunk."""

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"steps: must be ≥ 1, got {steps}")
        self.steps = int(steps)
        self._actions: deque[np.ndarray] = deque()

    def __len__(self) -> int:
        return len(self._actions)

    @property
    def empty(self) -> bool:
        return not self._actions

    def push(self, chunk: np.ndarray) -> None:
        """Queue the first ``steps`` rows of an (N, action_dim) chunk; the queue must be empty."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 2:
            raise ValueError(f"chunk: expected (N, action_dim), got shape {chunk.shape}")
        if self._actions:
            raise RuntimeError("ActionQueue.push: the queue still holds actions; pop them or clear() first")
        if chunk.shape[0] < self.steps:
            raise ValueError(f"chunk: {chunk.shape[0]} actions, but {self.steps} are executed per query")
        self._actions.extend(np.array(a, copy=True) for a in chunk[: self.steps])

    def pop(self) -> np.ndarray:
        if not self._actions:
            raise IndexError("ActionQueue.pop: empty queue")
        return self._actions.popleft()

    def clear(self) -> None:
        self._actions.clear()

"""`PolicyClient`: what a plugin's ``run_episode`` calls, once per env step.

The client executes chunks in one mode (`vlm4vla.evaluation.chunking`): it pops the next
queued action, and only when the queue is empty sends the observation to the policy (in the
main process, batched with other workers' requests) and queues the first ``steps_per_query``
actions of the returned chunk. ``reset()`` clears the queue; plugins call it at every subtask
reset of a chained suite (the harness calls it before every episode).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vlm4vla.evaluation.chunking import ActionQueue, steps_per_query

QueryFn = Callable[[np.ndarray, str], np.ndarray]
"""(image (H, W, 3) uint8, instruction) → chunk (N, action_dim)."""


class PolicyClient:
    """Per-env action queue in front of a (possibly remote, batched) policy.

    Args:
        query: sends one observation to the policy and returns its (N, action_dim) chunk.
        mode: ``full``, ``half`` or ``single``.
        chunk_size: N of the policy.
        record_frames: keep every image passed to `act` (for episode videos).
    """

    def __init__(self, query: QueryFn, *, mode: str, chunk_size: int, record_frames: bool = False) -> None:
        self._query = query
        self.mode = mode
        self.chunk_size = int(chunk_size)
        self.steps_per_query = steps_per_query(mode, chunk_size)
        self.queue = ActionQueue(self.steps_per_query)
        self.queries = 0
        self.steps = 0
        self.record_frames = record_frames
        self.frames: list[np.ndarray] = []

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        """The action for this step: the next queued one, querying the policy when the queue is empty."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image: expected (H, W, 3) uint8, got {image.dtype} {image.shape}")
        if self.record_frames:
            self.frames.append(image.copy())
        if self.queue.empty:
            chunk = np.asarray(self._query(image, instruction), dtype=np.float32)
            if chunk.ndim != 2 or chunk.shape[0] != self.chunk_size:
                raise ValueError(f"policy returned a chunk of shape {chunk.shape}; expected ({self.chunk_size}, D)")
            self.queue.push(chunk)
            self.queries += 1
        self.steps += 1
        return self.queue.pop()

    def reset(self) -> None:
        """Drop queued actions (episode or subtask reset): the next `act` queries the policy."""
        self.queue.clear()

"""Turn a list of samples into a batch, optionally through a backbone's input function."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

InputsFn = Callable[[list[np.ndarray], list[str]], Mapping[str, torch.Tensor]]


class VLACollator:
    """Collate samples (dicts from the VLA datasets) into a training batch.

    With ``inputs_fn`` (a picklable callable the backbone provides, run inside the DataLoader
    workers: resizing, tokenisation, processor)::

        {"inputs": inputs_fn(images, instructions), "actions": (B, N, 7) float32,
         "action_mask": (B, N) bool}

    Without it (raw batches for inspection and tests)::

        {"images": uint8 (B, H, W, 3), "instructions": list[str], "actions", "action_mask"}
    """

    def __init__(self, inputs_fn: InputsFn | None = None) -> None:
        self.inputs_fn = inputs_fn

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of samples")
        images = [np.asarray(s["image"]) for s in samples]
        instructions = [str(s["instruction"]) for s in samples]
        actions = torch.stack([torch.as_tensor(s["actions"], dtype=torch.float32) for s in samples])
        mask = torch.stack([torch.as_tensor(s["action_mask"], dtype=torch.bool) for s in samples])
        batch: dict[str, Any] = {"actions": actions, "action_mask": mask}
        if self.inputs_fn is not None:
            batch["inputs"] = dict(self.inputs_fn(images, instructions))
            return batch
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise ValueError(
                f"raw collation needs images of one shape, got {sorted(shapes)}; pass an inputs_fn"
            )
        batch["images"] = torch.from_numpy(np.stack(images))
        batch["instructions"] = instructions
        return batch

    def __repr__(self) -> str:
        return f"VLACollator(inputs_fn={self.inputs_fn!r})"


__all__ = ["InputsFn", "VLACollator"]

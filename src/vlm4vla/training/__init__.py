"""Training: `VLAModule` (LightningModule), `VLACheckpoint` (checkpoints + policy bundles),
FSDP2 sharding, recipes and the memory estimator. Attributes are imported lazily."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VLAModule": "vlm4vla.training.module",
    "VLACheckpoint": "vlm4vla.training.export",
    "export_checkpoint": "vlm4vla.training.export",
    "estimate_memory": "vlm4vla.training.memory",
    "load_recipe": "vlm4vla.training.recipes",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlm4vla.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

"""Training: `VLAModule` (LightningModule), `VLACheckpoint` (checkpoints + policy bundles),
FSDP2 sharding, recipes and the memory estimator. Attributes are imported lazily."""

from __future__ import annotations

from vlm4vla.lazy_imports import lazy_exports

_EXPORTS = {
    "VLAModule": "vlm4vla.training.module",
    "VLACheckpoint": "vlm4vla.training.export",
    "export_checkpoint": "vlm4vla.training.export",
    "estimate_memory": "vlm4vla.training.memory",
    "load_recipe": "vlm4vla.training.recipes",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

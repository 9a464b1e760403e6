"""Datasets, datamodules and collation (the action space lives in `vlm4vla.policy.action_space`).

Datamodules (LightningDataModules): :class:`CalvinDataModule`, :class:`LiberoDataModule`,
:class:`BridgeDataModule`. Attributes are imported lazily so ``import vlm4vla.data`` stays cheap.
"""

from __future__ import annotations

from vlm4vla.lazy_imports import lazy_exports

_EXPORTS = {
    "CalvinDataModule": "vlm4vla.data.calvin",
    "LiberoDataModule": "vlm4vla.data.libero",
    "BridgeDataModule": "vlm4vla.data.bridge",
    "VLADataModule": "vlm4vla.data.datamodule",
    "EpisodeDataModule": "vlm4vla.data.datamodule",
    "VLACollator": "vlm4vla.data.collate",
    "compute_stats": "vlm4vla.data.stats",
    "DatasetFormatError": "vlm4vla.data.formats.base",
    "EpisodeReader": "vlm4vla.data.formats.base",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

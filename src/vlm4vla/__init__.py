"""vlm4vla: turn a Hugging Face vision-language model into a vision-language-action policy.

``from vlm4vla import VLAConfig, VLAPolicy, create_policy`` (imported lazily: ``import vlm4vla``
alone loads neither torch nor transformers).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "VLAConfig": "vlm4vla.policy.config",
    "LoraSettings": "vlm4vla.policy.config",
    "VLAPolicy": "vlm4vla.policy.policy",
    "create_policy": "vlm4vla.policy.policy",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlm4vla' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

"""vlm4vla: turn a Hugging Face vision-language model into a vision-language-action policy.

``from vlm4vla import VLAConfig, VLAPolicy, create_policy`` (imported lazily: ``import vlm4vla``
alone loads neither torch nor transformers).
"""

from __future__ import annotations

from vlm4vla.lazy_imports import lazy_exports

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "VLAConfig": "vlm4vla.policy.config",
    "LoraSettings": "vlm4vla.policy.config",
    "VLAPolicy": "vlm4vla.policy.policy",
    "create_policy": "vlm4vla.policy.policy",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

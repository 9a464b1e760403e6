"""The VLA policy: its configuration, action space, ActionQuery, FCDecoder head, loss and `VLAPolicy`.

Attributes are imported lazily, so ``vlm4vla.policy.action_space`` (numpy + torch) can be used
without importing transformers.
"""

from __future__ import annotations

from vlm4vla.lazy_imports import lazy_exports

_EXPORTS = {
    "VLAConfig": "vlm4vla.policy.config",
    "LoraSettings": "vlm4vla.policy.config",
    "create_policy": "vlm4vla.policy.policy",
    "VLAPolicy": "vlm4vla.policy.policy",
    "ActionQuery": "vlm4vla.policy.action_query",
    "FCDecoder": "vlm4vla.policy.heads",
    "action_loss": "vlm4vla.policy.losses",
    "ActionNormalizer": "vlm4vla.policy.action_space",
    "GripperConvention": "vlm4vla.policy.action_space",
    "normalizer_from_dict": "vlm4vla.policy.action_space",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""VLM backbones: the `VLABackbone` base class, its registry and the paper's families."""

from vlm4vla.backbones.base import (
    BACKBONES,
    VLABackbone,
    VLAInputProcessor,
    get_backbone,
    list_backbones,
    register_backbone,
)

# Importing the family modules registers them.
from vlm4vla.backbones import kosmos2, paligemma, qwen_vl  # noqa: E402,F401  isort: skip

__all__ = [
    "BACKBONES",
    "VLABackbone",
    "VLAInputProcessor",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]

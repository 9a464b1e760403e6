"""The VLA policy: ActionQuery, FCDecoder head, loss and `VLAPolicy`."""

from vlm4vla.policy.action_query import ActionQuery
from vlm4vla.policy.heads import FCDecoder
from vlm4vla.policy.losses import action_loss
from vlm4vla.policy.policy import LoraSettings, VLAPolicy

__all__ = ["ActionQuery", "FCDecoder", "LoraSettings", "VLAPolicy", "action_loss"]

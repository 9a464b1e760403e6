"""The learnable ActionQuery: one embedding (H parameters) appended after the instruction."""

from __future__ import annotations

import torch
from torch import nn


class ActionQuery(nn.Module):
    """A single learnable vector the backbone writes into its ActionQuery slot.

    Initialised to zeros, as in the released code (``nn.Parameter(torch.zeros(hidden_size))``
    in vlm4vla/model/backbone/base_backbone.py); it still learns, since the hidden state at its
    slot depends on it through every layer.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.embedding = nn.Parameter(torch.zeros(hidden_size))

    def reset_parameters(self) -> None:
        if self.embedding.device.type != "meta":
            nn.init.zeros_(self.embedding)

    def forward(self) -> torch.Tensor:
        return self.embedding

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}"

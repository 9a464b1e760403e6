"""The learnable ActionQuery: one embedding (H parameters) appended after the instruction."""

from __future__ import annotations

import torch
from torch import nn


class ActionQuery(nn.Module):
    """A single learnable vector the backbone writes into its ActionQuery slot.

    Initialised like a word embedding (normal, std 0.02) so it starts on the scale of the
    tokens around it.
    """

    def __init__(self, hidden_size: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.init_std = init_std
        self.embedding = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.embedding.device.type != "meta":
            nn.init.normal_(self.embedding, std=self.init_std)

    def forward(self) -> torch.Tensor:
        return self.embedding

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}"

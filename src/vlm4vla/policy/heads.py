"""Action heads: ``FCDecoder``, the paper's MLP from the ActionQuery hidden state to a chunk."""

from __future__ import annotations

import torch
from torch import nn


def _tower(out_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, out_features),
    )


class FCDecoder(nn.Module):
    """The VLM4VLA policy head (paper-notes §1), identical for every backbone but ``H``.

    * trunk: Linear(H, H/2) → ReLU → Linear(H/2, 1024)
    * arm tower: 1024 → 1024 → 512 → 256 → 6·N, then Tanh (normalised deltas in [-1, 1])
    * gripper tower: 1024 → 1024 → 512 → 256 → N logits (no sigmoid; the loss is BCE-with-logits)

    Xavier-uniform weights and zero biases. At N=10 it has 6,577,222 parameters for H=2048
    (the paper's Table 9).
    """

    def __init__(self, hidden_size: int, chunk_size: int, arm_dim: int = 6) -> None:
        super().__init__()
        if hidden_size < 2 or hidden_size % 2:
            raise ValueError(f"hidden_size: expected an even integer ≥ 2, got {hidden_size}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected ≥ 1, got {chunk_size}")
        self.hidden_size = hidden_size
        self.chunk_size = chunk_size
        self.arm_dim = arm_dim
        self.trunk = nn.Sequential(
            nn.Linear(hidden_size, hidden_size // 2), nn.ReLU(), nn.Linear(hidden_size // 2, 1024)
        )
        self.arm = _tower(arm_dim * chunk_size)
        self.gripper = _tower(chunk_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.device.type != "meta":
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden`` (B, H) → arm (B, N, 6) in [-1, 1] and gripper logits (B, N)."""
        features = self.trunk(hidden)
        arm = torch.tanh(self.arm(features)).view(-1, self.chunk_size, self.arm_dim)
        return arm, self.gripper(features)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, chunk_size={self.chunk_size}, arm_dim={self.arm_dim}"

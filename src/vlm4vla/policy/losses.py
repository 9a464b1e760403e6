"""The VLM4VLA action loss: Huber on the arm + λ · BCE on the gripper, padded steps masked."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def action_loss(
    arm: torch.Tensor,
    gripper_logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    gripper_weight: float = 0.01,
    huber_delta: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Loss parts for a predicted chunk.

    Args:
        arm: (B, N, 6) predicted normalised arm actions.
        gripper_logits: (B, N) gripper logits.
        target: (B, N, 7) target actions; [..., :6] normalised arm, [..., 6] gripper in {0, 1}.
        mask: (B, N) bool, False on padded steps past the episode / window end.
        gripper_weight: λ. The paper's equation uses 1; its released code 0.01 (the default).

    Returns ``loss`` (the total), ``loss_arm``, ``loss_gripper`` and ``gripper_accuracy``, each
    a mean over valid steps (arm: over valid steps × 6 dims).
    """
    if target.ndim != 3 or target.shape[:2] != arm.shape[:2] or target.shape[-1] != arm.shape[-1] + 1:
        raise ValueError(
            f"target: expected shape {(*arm.shape[:2], arm.shape[-1] + 1)} matching the prediction, "
            f"got {tuple(target.shape)}"
        )
    if mask is None:
        mask = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
    elif mask.shape != target.shape[:2]:
        raise ValueError(f"mask: expected shape {tuple(target.shape[:2])}, got {tuple(mask.shape)}")
    weights = mask.to(arm.dtype)
    valid = weights.sum().clamp_min(1.0)
    target = target.to(arm.dtype)
    arm_target, gripper_target = target[..., :-1], target[..., -1]

    arm_elementwise = F.huber_loss(arm, arm_target, reduction="none", delta=huber_delta)
    loss_arm = (arm_elementwise * weights.unsqueeze(-1)).sum() / (valid * arm.shape[-1])
    gripper_elementwise = F.binary_cross_entropy_with_logits(
        gripper_logits.to(arm.dtype), gripper_target, reduction="none"
    )
    loss_gripper = (gripper_elementwise * weights).sum() / valid
    with torch.no_grad():
        correct = ((gripper_logits > 0).to(arm.dtype) == gripper_target).to(arm.dtype)
        gripper_accuracy = (correct * weights).sum() / valid
    return {
        "loss": loss_arm + gripper_weight * loss_gripper,
        "loss_arm": loss_arm,
        "loss_gripper": loss_gripper,
        "gripper_accuracy": gripper_accuracy,
    }

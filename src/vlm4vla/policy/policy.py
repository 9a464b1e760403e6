"""`VLAPolicy`: backbone + ActionQuery + FCDecoder + loss, and the training-mode switches."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlm4vla.backbones.base import ImagesLike, VLABackbone
from vlm4vla.policy import bundle
from vlm4vla.policy.action_query import ActionQuery
from vlm4vla.policy.action_space import ActionNormalizer, normalizer_from_dict
from vlm4vla.policy.config import BACKBONE_SWITCHES, LoraSettings, VLAConfig
from vlm4vla.policy.heads import FCDecoder
from vlm4vla.policy.losses import action_loss


class VLAPolicy(nn.Module):
    """``action = FCDecoder(VLM([image][instruction][ActionQuery]))`` (paper-notes §1).

    Args:
        backbone: a `VLABackbone`.
        chunk_size: N, the number of future actions predicted per query.
        gripper_loss_weight: λ of the BCE gripper loss (default 0.01 as in the released code).
        normalizer: optional action normaliser; :meth:`predict_chunk` inverts it.
    """

    def __init__(
        self,
        backbone: VLABackbone,
        *,
        chunk_size: int = 10,
        gripper_loss_weight: float = 0.01,
        normalizer: ActionNormalizer | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, VLABackbone):
            raise TypeError(f"backbone: expected a VLABackbone, got {type(backbone).__name__}")
        self.backbone = backbone
        self.chunk_size = int(chunk_size)
        self.gripper_loss_weight = float(gripper_loss_weight)
        self.normalizer = normalizer
        # What the training images went through (`VLAConfig.image_pipeline`), set by training.
        self.image_pipeline: dict[str, Any] | None = None
        self.lora_settings: LoraSettings | None = None
        # The config it was created from (`from_config`); `config` reflects the current state.
        self.spec: VLAConfig | None = None
        hidden = backbone.hidden_size
        device = backbone.device if backbone.device.type == "meta" else None
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.action_query = ActionQuery(hidden)
            self.head = FCDecoder(hidden, self.chunk_size)
        if device is None:
            # The new modules follow the backbone's device (its dtype is for the VLM only:
            # the head stays in fp32 and autocast handles mixed precision).
            self.action_query.to(backbone.device)
            self.head.to(backbone.device)
        # An untied LM head never reaches the ActionQuery hidden state: freeze it so DDP does
        # not wait for its gradients and optimisers do not hold state for it.
        for param in backbone.unused_parameters():
            param.requires_grad_(False)

    def drop_unused_lm_head(self) -> list[str]:
        """Remove the backbone's untied, never-run LM head (`VLABackbone.drop_unused_lm_head`):
        done by training (every strategy) and by bundle loading. Returns the removed state-dict
        names (in this module's namespace); checkpoints that still hold them load with those keys
        skipped (`load_state_dict` and bundles alike)."""
        removed = [f"backbone.model.{name}" for name in self.backbone.drop_unused_lm_head()]
        if removed and not getattr(self, "dropped_keys", None):
            self._register_load_state_dict_pre_hook(_skip_dropped_keys, with_module=True)
        self.dropped_keys = sorted({*getattr(self, "dropped_keys", ()), *removed})
        return removed

    # ------------------------------------------------------------------ forward
    def predict(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Arm (B, N, 6) in [-1, 1] and gripper logits (B, N) for processed inputs."""
        hidden = self.backbone(inputs, self.action_query())
        return self.head(hidden.to(self.head.trunk[0].weight.dtype))

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Loss dict for a collated batch ``{"inputs", "actions" (B,N,7), "action_mask" (B,N)}``."""
        missing = [k for k in ("inputs", "actions") if k not in batch]
        if missing:
            raise ValueError(f"batch: missing key(s) {missing}; expected 'inputs', 'actions', 'action_mask'")
        arm, gripper_logits = self.predict(batch["inputs"])
        actions = batch["actions"].to(arm.device)
        if actions.shape[1] != self.chunk_size:
            raise ValueError(
                f"batch['actions']: chunk of {actions.shape[1]} steps, but the policy predicts {self.chunk_size}"
            )
        mask = batch.get("action_mask")
        return action_loss(
            arm,
            gripper_logits,
            actions,
            None if mask is None else mask.to(arm.device),
            gripper_weight=self.gripper_loss_weight,
        )

    @torch.no_grad()
    def predict_chunk(self, images: ImagesLike, instructions: Sequence[str]) -> torch.Tensor:
        """(B, N, 7) actions in the dataset's units.

        The arm is de-normalised with the policy's normaliser; the gripper is binarised and, when
        the normaliser carries the dataset's gripper convention, mapped to it (−1/+1 for CALVIN
        and LIBERO, 0/1 for Bridge); without a normaliser it is {0, 1} (1 = the positive class
        of the training target).

        Always runs in eval mode (no dropout), so the same inputs give the same actions.
        """
        inputs = self.backbone.prepare_inputs(images, instructions)
        was_training = self.training
        self.eval()
        try:
            arm, gripper_logits = self.predict(inputs)
        finally:
            self.train(was_training)
        gripper = (torch.sigmoid(gripper_logits.float()) > 0.5).float()
        actions = torch.cat([arm.float(), gripper.unsqueeze(-1)], dim=-1)
        if self.normalizer is not None:
            restored = np.array(self.normalizer.denormalize(actions.cpu().numpy()), dtype=np.float32)
            restored[..., 6] = self.normalizer.gripper.to_env(restored[..., 6])
            actions = torch.from_numpy(restored)
        return actions.cpu()

    # ------------------------------------------------------------------ config and bundles
    @classmethod
    def from_config(cls, config: VLAConfig, *, processor: Any = None) -> VLAPolicy:
        """Build the policy ``config`` describes (backbone, ActionQuery, head, normaliser, switches)."""
        from vlm4vla.backbones.factory import create_backbone

        backbone = create_backbone(
            config.backbone,
            weights=config.weights,
            path=config.backbone_path,
            hf_config=config.backbone_config,
            processor=processor,
            prompt_scheme=config.prompt_scheme,
            image_size=config.image_size,
            switches=config.switches(),
        )
        policy = cls(
            backbone,
            chunk_size=config.chunk_size,
            gripper_loss_weight=config.gripper_loss_weight,
            normalizer=normalizer_from_dict(config.normalizer) if config.normalizer is not None else None,
        )
        policy.spec = config
        policy.image_pipeline = dict(config.image_pipeline) if config.image_pipeline is not None else None
        # peft builds its adapters on the default device: on meta, keep them there too.
        meta = backbone.device.type == "meta"
        with torch.device("meta") if meta else contextlib.nullcontext():
            policy.configure_training(
                freeze_vision_encoder=config.freeze_vision_encoder,
                freeze_word_embeddings=config.freeze_word_embeddings,
                freeze_llm=config.freeze_llm,
                lora=config.lora,
            )
        return policy

    @property
    def config(self) -> VLAConfig:
        """The `VLAConfig` of this policy as it is now (what a bundle stores)."""
        base = self.spec or VLAConfig(backbone=self.backbone.name)
        # The released-code switches as the backbone resolved them (None where they do not apply).
        switches = {name: self.backbone.switches.get(name) for name in BACKBONE_SWITCHES}
        return base.replace(
            **switches,
            backbone_config=self.backbone.config.to_dict(),
            prompt_scheme=self.backbone.prompt_scheme,
            image_size=self.backbone.image_size,
            chunk_size=self.chunk_size,
            gripper_loss_weight=self.gripper_loss_weight,
            lora=self.lora_settings,
            normalizer=self.normalizer.to_dict() if self.normalizer is not None else None,
            image_pipeline=dict(self.image_pipeline) if self.image_pipeline is not None else None,
        )

    def save_pretrained(self, directory: str | os.PathLike, *, state_dict: dict | None = None) -> Path:
        """Write a self-contained policy bundle (safetensors weights, config, normaliser, processor)."""
        return bundle.save_bundle(self, directory, state_dict=state_dict)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> VLAPolicy:
        """Load a policy bundle written by :meth:`save_pretrained` (no pickle, no download)."""
        from vlm4vla.backbones import get_backbone

        config, weights, processor_dir = bundle.read_bundle(directory)
        try:
            processor = get_backbone(config.family).load_processor(processor_dir, local_files_only=True)
        except (OSError, ValueError) as err:
            raise bundle.BundleError(
                f"{Path(directory) / bundle.PROCESSOR_DIR}: unreadable processor files "
                f"({str(err).strip().splitlines()[0]})"
            ) from None
        # The architecture comes from the stored configuration; the weights from the bundle.
        policy = cls.from_config(config.replace(weights="random"), processor=processor)
        policy.spec = config
        policy.drop_unused_lm_head()  # never run; bundles written before FSDP2 dropped it still hold it
        bundle.load_weights(policy, weights, config.family)
        return policy.to(device).eval()

    # ------------------------------------------------------------------ training-mode switches
    def freeze_vision_encoder(self) -> int:
        """Freeze the vision encoder (paper ablation). Returns the trainable-parameter count."""
        self.backbone.vision_encoder.requires_grad_(False)
        return self.num_trainable_parameters()

    def freeze_word_embeddings(self) -> int:
        """Freeze the word-embedding table (paper ablation). Returns the trainable-parameter count."""
        self.backbone.word_embeddings.requires_grad_(False)
        return self.num_trainable_parameters()

    def freeze_llm(self) -> int:
        """Freeze the whole language model incl. word embeddings; vision, projector, ActionQuery
        and head stay trainable. Returns the trainable-parameter count."""
        self.backbone.language_model.requires_grad_(False)
        self.backbone.word_embeddings.requires_grad_(False)
        return self.num_trainable_parameters()

    def apply_lora(self, settings: LoraSettings | None = None) -> int:
        """Replace full fine-tuning of the backbone by LoRA adapters (peft).

        Only the adapters, the ActionQuery and the head are trained afterwards. Returns the
        trainable-parameter count.
        """
        from peft import LoraConfig, inject_adapter_in_model

        settings = settings or LoraSettings()
        backbone = self.backbone
        target_parameters = (
            list(backbone.lora_target_parameters)
            if settings.include_experts and backbone.lora_target_parameters
            else None
        )
        if target_parameters and settings.dropout:
            raise ValueError(
                f"lora.dropout: {backbone.name} adapts MoE expert parameters, which peft supports only "
                "with dropout=0; set dropout to 0 or include_experts to False"
            )
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=settings.target_modules or backbone.lora_target_modules,
            target_parameters=target_parameters,
        )
        backbone.model.requires_grad_(False)
        inject_adapter_in_model(config, backbone.model)
        self.lora_settings = settings
        for name, param in backbone.model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
        return self.num_trainable_parameters()

    def configure_training(
        self,
        *,
        freeze_vision_encoder: bool = False,
        freeze_word_embeddings: bool = False,
        freeze_llm: bool = False,
        lora: LoraSettings | None = None,
    ) -> int:
        """Apply the recipe's switches in a fixed order; returns the trainable-parameter count."""
        if lora is not None:
            self.apply_lora(lora)
        if freeze_vision_encoder:
            self.freeze_vision_encoder()
        if freeze_word_embeddings:
            self.freeze_word_embeddings()
        if freeze_llm:
            self.freeze_llm()
        return self.num_trainable_parameters()

    # ------------------------------------------------------------------ sizes
    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_counts(self) -> dict[str, int]:
        """Backbone, head, ActionQuery and trainable parameter counts (tied weights once)."""
        backbone = sum(p.numel() for n, p in self.backbone.model.named_parameters() if "lora_" not in n)
        lora = sum(p.numel() for n, p in self.backbone.model.named_parameters() if "lora_" in n)
        head = sum(p.numel() for p in self.head.parameters())
        query = sum(p.numel() for p in self.action_query.parameters())
        counts = {
            "backbone_params": backbone,
            "head_params": head,
            "action_query_params": query,
            "trainable_params": self.num_trainable_parameters(),
            "total_params": backbone + lora + head + query,
        }
        if lora:
            counts["lora_params"] = lora
        return counts


def _skip_dropped_keys(module: VLAPolicy, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """A checkpoint written while the policy still had its LM head loads into one without it."""
    for key in module.dropped_keys:
        state_dict.pop(prefix + key, None)


def create_policy(config: VLAConfig | str, /, *, processor: Any = None, **overrides: Any) -> VLAPolicy:
    """A `VLAPolicy` from a `VLAConfig` or a backbone name, like ``timm.create_model``:
    ``create_policy("qwen3-vl-2b", weights="random", chunk_size=4)``."""
    if isinstance(config, str):
        config = VLAConfig(backbone=config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    return VLAPolicy.from_config(config, processor=processor)

"""`VLAModule`: the LightningModule that trains a `VLAPolicy`."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn

from vlm4vla.errors import ConfigError
from vlm4vla.policy.config import BACKBONE_SWITCHES, LoraSettings, VLAConfig
from vlm4vla.policy.policy import VLAPolicy

RNG_KEY = "vlm4vla_rng_states"


class VLAModule(pl.LightningModule):
    """Trains a `VLAPolicy` (paper-notes §1, §3–4).

    The flat model arguments (what recipes set under ``model:``) make one `VLAConfig`,
    ``self.vla_config``, from which the policy is built (`VLAPolicy.from_config`).

    Args:
        backbone: preset name (``qwen3-vl-2b`` …) or ``tiny:<family>``.
        weights: ``pretrained`` (default) or ``random`` (train from scratch).
        backbone_path: a local directory with the VLM weights (e.g. an auxiliary fine-tuned VLM).
        prompt_scheme / image_size: backbone input options (Qwen long/short; 224/512/768).
        chunk_size: N, actions predicted per query.
        gripper_loss_weight: λ of the gripper BCE.
        freeze_vision_encoder / freeze_word_embeddings / freeze_llm / lora_rank: the paper's
            training-mode ablations (LoRA off when ``lora_rank`` is 0).
        qwen_positions / paligemma_attention / kosmos2_prompt / deepstack: the released code's
            behaviours (`vlm4vla.policy.config.BACKBONE_SWITCHES`): ``qwen_positions: 1d``
            (Qwen: 1-D positions, no M-RoPE), ``paligemma_attention: causal`` (no bidirectional
            image prefix), ``kosmos2_prompt: released`` (the literal released prompt),
            ``deepstack: false`` (Qwen3-VL / MoE: no DeepStack inputs). Unset = the stock model;
            one set for a backbone it does not apply to is refused.
        lr, weight_decay, betas: AdamW. Norms, biases and the ActionQuery get no weight decay.
        warmup_steps / warmup_epochs: linear warm-up over that many optimiser steps, or that
            fraction of an epoch (the released CALVIN recipe: 0.25); then ``lr_schedule`` = ``constant`` (paper) or ``cosine``
            (to 10% of ``lr`` at the Trainer's ``max_steps``).
        activation_checkpointing: recompute decoder-layer activations in the backward pass.
        fsdp_param_dtype: FSDP2 compute dtype of sharded parameters (gradients are reduced in
            fp32); only used under ``ModelParallelStrategy``.
    """

    def __init__(
        self,
        backbone: str = "qwen3-vl-2b",
        *,
        weights: Literal["pretrained", "random"] = "pretrained",
        backbone_path: str | None = None,
        prompt_scheme: str | None = None,
        image_size: int = 224,
        chunk_size: int = 10,
        gripper_loss_weight: float = 0.01,
        freeze_vision_encoder: bool = False,
        freeze_word_embeddings: bool = False,
        freeze_llm: bool = False,
        lora_rank: int = 0,
        lora_alpha: int | None = None,
        qwen_positions: str | None = None,
        paligemma_attention: str | None = None,
        kosmos2_prompt: str | None = None,
        deepstack: bool | None = None,
        lr: float = 2e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        warmup_epochs: float | None = None,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        activation_checkpointing: bool = False,
        fsdp_param_dtype: Literal["bfloat16", "float32"] | None = "bfloat16",
    ) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ConfigError(f"chunk_size: expected ≥ 1, got {chunk_size}")
        if lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule: expected 'constant' or 'cosine', got {lr_schedule!r}")
        if weights not in ("pretrained", "random"):
            raise ConfigError(f"weights: expected 'pretrained' or 'random', got {weights!r}")
        if warmup_epochs is not None and (warmup_steps or warmup_epochs < 0):
            raise ConfigError("warmup_epochs: set it or warmup_steps, not both (and ≥ 0)")
        self.save_hyperparameters()
        self.vla_config = self.policy_config(self.hparams)
        self.vla_config.family  # noqa: B018  (validates the backbone name before any weights load)
        self.vla_config.check_switches()  # … and the switches against its family
        self.policy: VLAPolicy | None = None
        self._sharded = False
        self._rng_to_restore: dict[str, Any] | None = None
        self._step_started: float | None = None
        self._last_batch_size = 0

    # ------------------------------------------------------------------ model
    @staticmethod
    def policy_config(hparams: Mapping[str, Any]) -> VLAConfig:
        """The `VLAConfig` of a module's (or a checkpoint's, or a recipe's) model arguments."""
        defaults = VLAConfig()
        get = lambda key: hparams[key] if hparams.get(key) is not None else getattr(defaults, key)  # noqa: E731
        return VLAConfig(
            backbone=str(get("backbone")),
            weights=get("weights"),
            backbone_path=hparams.get("backbone_path"),
            prompt_scheme=hparams.get("prompt_scheme"),
            image_size=int(get("image_size")),
            chunk_size=int(get("chunk_size")),
            gripper_loss_weight=float(get("gripper_loss_weight")),
            freeze_vision_encoder=bool(hparams.get("freeze_vision_encoder", False)),
            freeze_word_embeddings=bool(hparams.get("freeze_word_embeddings", False)),
            freeze_llm=bool(hparams.get("freeze_llm", False)),
            lora=LoraSettings.for_rank(hparams.get("lora_rank") or 0, hparams.get("lora_alpha")),
            qwen_positions=hparams.get("qwen_positions"),
            paligemma_attention=hparams.get("paligemma_attention"),
            kosmos2_prompt=hparams.get("kosmos2_prompt"),
            deepstack=hparams.get("deepstack"),
        )

    def build_policy(self, *, weights: Literal["pretrained", "random", "meta"] | None = None) -> VLAPolicy:
        """Build the policy once (weights loaded, switches applied); later calls return it.

        ``weights="meta"`` builds it on the meta device (sizing, recipe checks).
        """
        if self.policy is not None:
            return self.policy
        config = self.vla_config if weights is None else self.vla_config.replace(weights=weights)
        policy = VLAPolicy.from_config(config)
        # Training never runs an untied LM head: every strategy leaves it out, so checkpoints of
        # FSDP2, DDP and one device hold the same keys (older ones with the head still load).
        policy.drop_unused_lm_head()
        if self.hparams.activation_checkpointing:
            policy.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.policy = policy
        return policy

    @property
    def _builds_sharded(self) -> bool:
        """FSDP2 over several ranks: the policy is built by `build_sharded_policy` in
        `configure_model` (rank 0 holds the only full copy), not by every rank in `setup`."""
        mesh = self._device_mesh
        return mesh is not None and mesh.size() > 1

    def setup(self, stage: str) -> None:
        if self._builds_sharded and self.policy is None:
            return  # built, and wired to the datamodule, in configure_model
        self.build_policy()
        self._wire_datamodule()

    def _wire_datamodule(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        data_chunk = getattr(datamodule, "chunk_size", None)
        if data_chunk is not None and data_chunk != self.hparams.chunk_size:
            raise ConfigError(
                f"chunk_size: the model predicts {self.hparams.chunk_size} actions but the datamodule "
                f"yields chunks of {data_chunk}; set both to the same value"
            )
        if hasattr(datamodule, "set_inputs_fn"):
            datamodule.set_inputs_fn(self.policy.backbone.input_processor)
        if getattr(datamodule, "normalizer", None) is not None:
            self.policy.normalizer = datamodule.normalizer
        if hasattr(datamodule, "image_pipeline"):
            self.policy.image_pipeline = datamodule.image_pipeline()

    def configure_model(self) -> None:
        """Called by Lightning after ``setup``; under ``ModelParallelStrategy`` shards with FSDP2.

        Over several ranks the policy is built on the meta device and filled from rank 0
        (`vlm4vla.training.strategies.build_sharded_policy`): one full copy in host memory on
        rank 0, none on the others, and no LM head. One device and DDP build it as before."""
        if self._sharded:
            return
        if self._builds_sharded and self.policy is None:
            from vlm4vla.training.strategies import build_sharded_policy

            self.policy = build_sharded_policy(
                lambda: VLAPolicy.from_config(self.vla_config),
                self._device_mesh,
                device=self._root_device(),
                param_dtype=self.hparams.fsdp_param_dtype,
                activation_checkpointing=bool(self.hparams.activation_checkpointing),
            )
            self._sharded = True
            self._wire_datamodule()
            return
        policy = self.build_policy()
        if self._device_mesh is not None:
            from vlm4vla.training.strategies import shard_policy

            shard_policy(policy, self._device_mesh, param_dtype=self.hparams.fsdp_param_dtype)
            self._sharded = True

    def _root_device(self) -> torch.device:
        if self._trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning restores model, optimiser, scheduler and loops; the RNG streams (dropout)
        # are saved here so a resumed run draws the same numbers as an uninterrupted one.
        checkpoint[RNG_KEY] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
        if torch.cuda.is_available():
            checkpoint[RNG_KEY]["cuda"] = torch.cuda.get_rng_state_all()

    @staticmethod
    def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
        """Raise if a checkpoint's model (``saved`` hparams) differs from this run's."""
        for key in ("backbone", "chunk_size", "lora_rank", *BACKBONE_SWITCHES):
            if key in saved and key in current and saved[key] != current[key]:
                raise ConfigError(
                    f"checkpoint: it was trained with {key}={saved[key]!r} but this run uses "
                    f"{key}={current[key]!r}; resume with the recipe it was trained with"
                )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another backbone or chunk size before any weight is touched."""
        self.check_compatible(checkpoint.get("hyper_parameters", {}), self.hparams)
        self._rng_to_restore = checkpoint.get(RNG_KEY)

    def _restore_rng(self) -> None:
        # Restored right before the first resumed step: everything Lightning draws while it
        # sets the run up must not shift the streams.
        state, self._rng_to_restore = self._rng_to_restore, None
        torch.set_rng_state(state["torch"])
        random.setstate((3, tuple(state["python"]), None))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    # ------------------------------------------------------------------ steps
    def _is_logging_step(self) -> bool:
        """Whether this training step's metrics reach the loggers (``log_every_n_steps``).

        Each ``self.log`` costs ~0.2 ms of bookkeeping; the loss parts, LR and throughput are
        only logged on the steps the loggers keep (and on the last step).
        """
        trainer = self.trainer
        step = trainer.global_step + 1
        return step % max(1, trainer.log_every_n_steps) == 0 or step >= trainer.max_steps > 0

    def _shared_step(self, batch: dict[str, Any], prefix: str) -> torch.Tensor:
        out = self.policy(batch)
        batch_size = int(batch["actions"].shape[0])
        on_step = prefix == "train"
        if on_step and not self._is_logging_step():
            out = {"loss": out["loss"]}  # the progress bar's loss only
        for key, value in out.items():
            self.log(
                f"{prefix}/{key}",
                value.detach(),
                batch_size=batch_size,
                on_step=on_step,
                on_epoch=not on_step,
                prog_bar=key == "loss",
                sync_dist=not on_step,
            )
        return out["loss"]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            self._restore_rng()
        # Throughput over the whole step-to-step interval: data, forward, backward, optimiser.
        now = time.perf_counter()
        if self._step_started is not None and self._is_logging_step():
            elapsed = max(now - self._step_started, 1e-9)
            self.log("train/samples_per_second", self._last_batch_size / elapsed, batch_size=1)
        self._step_started, self._last_batch_size = now, int(batch["actions"].shape[0])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        if optimizers and self._is_logging_step():
            self.log("train/lr", optimizers[0].param_groups[0]["lr"], batch_size=1)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: weight decay on weight matrices only (not norms, biases, ActionQuery)."""
        decay, no_decay = [], []
        norm_ids = {
            id(p)
            for m in self.policy.modules()
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(m).__name__.lower()
            for p in m.parameters(recurse=False)
        }
        for name, param in self.policy.named_parameters():
            if not param.requires_grad:
                continue
            if param.ndim < 2 or id(param) in norm_ids or name.startswith("action_query."):
                no_decay.append(param)
            else:
                decay.append(param)
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def warmup_steps_resolved(self) -> int:
        """Warm-up length in optimiser steps (``warmup_epochs`` converted with the Trainer's epoch length)."""
        hp = self.hparams
        if hp.warmup_epochs is None:
            return int(hp.warmup_steps)
        return _epochs_to_steps(float(hp.warmup_epochs), self.trainer)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=hp.lr, betas=tuple(hp.betas))
        total = None
        if self._trainer is not None:
            total = (
                self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
            )
        schedule = lr_lambda(self.warmup_steps_resolved(), hp.lr_schedule, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _epochs_to_steps(epochs: float, trainer: Any) -> int:
    """Optimiser steps in ``epochs`` of training (the Trainer's own estimate per epoch)."""
    max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    if max_epochs is None:
        raise ConfigError("warmup_epochs: needs trainer.max_epochs (steps per epoch come from it)")
    return round(epochs * trainer.estimated_stepping_batches / max_epochs)


def lr_lambda(warmup_steps: int, schedule: str, total_steps: int | None):
    """Multiplier of the base LR at a step: linear warm-up, then constant or cosine to 10%."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine" and total_steps:
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor

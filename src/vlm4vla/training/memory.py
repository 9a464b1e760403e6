"""Per-GPU memory estimate of a recipe under FSDP2 (``vlm4vla params --memory``).

This is an **estimate**, not a measurement. It adds up what FSDP2 (``fully_shard`` per
decoder layer and vision block, see `vlm4vla.training.strategies`) keeps on each GPU:

* **parameters** — the sharded master copy of every parameter (frozen ones too) in the
  trainer's precision (fp32 for ``32-true``), divided by the data-parallel size;
* **gradients** — sharded, in the master dtype, trainable parameters only;
* **optimizer** — AdamW's two moments (``exp_avg``, ``exp_avg_sq``) in the master dtype,
  trainable parameters only, sharded;
* **unsharded layer** — the all-gathered copy of the largest FSDP unit (decoder layer or
  vision block) in the compute dtype (``model.fsdp_param_dtype``, bf16), ×2 because the next
  unit is prefetched while the current one runs;
* **unsharded root** — the root unit (embeddings, an untied LM head, projector, ActionQuery,
  head: everything outside the layers and blocks). FSDP2 does not reshard the root after
  forward, so its gathered copy stays resident from the forward to the backward pass;
* **activations** — per micro-batch, from the sequence lengths below.

The untied LM head (vocabulary × hidden, never run) is not part of the trained policy
(`VLAPolicy.drop_unused_lm_head`), so it is in none of the terms. **Host RAM at
start-up** (fp32): before, every rank built the whole policy (one copy each); now rank 0 alone
does and the other ranks hold one tensor at a time (`build_sharded_policy`); DDP and one GPU
build one copy per rank as before.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", no tensor/sequence parallelism), for 16-bit activations::

    per layer, per sample:  34·s·h + 5·a·s²  bytes

with ``s`` tokens, hidden size ``h`` and ``a`` attention heads (``5·a·s²`` are the stored
attention scores, softmax output and dropout mask). It is scaled by ``compute bytes / 2`` for
fp32 compute. With activation checkpointing only each layer's input is kept
(``2·s·h`` bytes per layer and sample) plus one layer's full activations during its
recomputation. The vision tower is counted only when some of its parameters are trainable
(a frozen tower — LoRA, ``freeze_vision_encoder`` — keeps no activations for backward).

Sequence lengths come from `VLABackbone.image_token_counts` at the recipe's ``image_size`` —
each family's own processor arithmetic with the processor settings training uses (e.g. Qwen's
``smart_resize`` within the released pixel budget: 224² → 448², 256 / 196 image tokens) —
plus ``text_tokens`` (default 40: prompt template, instruction and ActionQuery).

Not included: the CUDA context and NCCL buffers (~1 GB), allocator fragmentation, the
transient fp32 gradient buffers of the unit being reduce-scattered, the dataloader's pinned
memory, and attention kernels that store less than ``5·a·s²`` (FlashAttention / SDPA store no
scores — pass ``attention_scores=False`` to drop that term). Sizes are in GiB (2³⁰ bytes).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlm4vla.errors import ConfigError
from vlm4vla.training.recipes import RECIPES_DIR, RecipeError, load_recipe

if TYPE_CHECKING:
    from vlm4vla.policy.config import VLAConfig

GIB = 2**30
DEFAULT_TEXT_TOKENS = 40
A100_80GB = 80.0

_DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
# Lightning ``trainer.precision`` → dtype of the parameters the optimizer updates.
_MASTER_DTYPE = {
    "64": "float64",
    "64-true": "float64",
    "32": "float32",
    "32-true": "float32",
    "bf16-mixed": "float32",
    "16-mixed": "float32",
    "bf16-true": "bfloat16",
    "bf16": "bfloat16",
    "16-true": "float16",
    "16": "float16",
}
# Lightning ``trainer.precision`` → dtype the forward runs in when FSDP2 does not set one.
_COMPUTE_DTYPE = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}
_SHARDED_STRATEGIES = ("ModelParallelStrategy", "FSDPStrategy")


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated per-GPU training memory of one recipe (GiB); see the module docstring."""

    recipe: str
    backbone: str
    # inputs
    world_size: int
    sharded: bool
    micro_batch: int
    sequence_length: int
    vision_tokens: int
    master_dtype: str
    compute_dtype: str
    activation_checkpointing: bool
    attention_scores: bool
    total_params: int
    trainable_params: int
    largest_unit_params: int
    root_params: int
    # estimate
    params_gb: float
    grads_gb: float
    optimizer_gb: float
    unsharded_layer_gb: float
    unsharded_root_gb: float
    activations_gb: float
    total_gb: float
    lm_head_params: int = 0
    """Parameters of the untied LM head training leaves out (0: there is none, or it is tied)."""
    host_before_gb: float = 0.0
    """Host RAM per rank at start-up when every rank builds the whole policy (fp32): the old FSDP2 path."""
    host_rank0_gb: float = 0.0
    """… on rank 0 now (it alone reads the weights); equal to ``host_before_gb`` for DDP / one GPU."""
    host_others_gb: float = 0.0
    """… on every other rank now (one tensor at a time under FSDP2)."""
    gpu_memory_gb: float = A100_80GB
    # the `VLAConfig` (``to_dict()``) that was sized, as training builds it
    config: dict[str, Any] | None = None

    @property
    def unsharded_gb(self) -> float:
        """All gathered (unsharded) parameter copies: two layers in flight plus the root."""
        return self.unsharded_layer_gb + self.unsharded_root_gb

    @property
    def fits(self) -> bool:
        return self.total_gb <= self.gpu_memory_gb

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unsharded_gb": self.unsharded_gb, "fits": self.fits}


@dataclass(frozen=True)
class _Tower:
    layers: int
    hidden: int
    heads: int
    tokens: int
    trainable: bool


@dataclass(frozen=True)
class _Profile:
    """What the estimate needs from the policy: exact counts and the towers' shapes."""

    backbone: str
    total_params: int
    trainable_params: int
    largest_unit_params: int
    root_params: int
    language: _Tower
    vision: _Tower
    lm_head_params: int = 0
    """The untied LM head that FSDP2 training drops (`VLAPolicy.drop_unused_lm_head`)."""
    largest_tensor_params: int = 0


# ---------------------------------------------------------------------- tokens
def image_tokens(backbone, image_size: int) -> tuple[int, int]:
    """(language-model image tokens, vision-tower tokens) per image: the backbone's own arithmetic."""
    return backbone.image_token_counts(image_size)


# ---------------------------------------------------------------------- model profile
def _profile_of(config: VLAConfig, text_tokens: int = DEFAULT_TEXT_TOKENS) -> _Profile:
    """Parameter and sequence-length profile of the policy ``config`` describes (built on meta)."""
    return _cached_profile(json.dumps(config.to_dict(), sort_keys=True), int(text_tokens))


def _heads(config: Any) -> int:
    for key in ("num_attention_heads", "attention_heads", "num_heads"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    raise ValueError(f"{type(config).__name__}: no attention-head count in the configuration")


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=64)
def _cached_profile(config_json: str, text_tokens: int) -> _Profile:
    from vlm4vla.policy.config import VLAConfig
    from vlm4vla.policy.policy import VLAPolicy

    config = VLAConfig.from_dict(json.loads(config_json))
    policy = VLAPolicy.from_config(config.replace(weights="meta"))
    vla_backbone = policy.backbone
    image_size, backbone = config.image_size, config.backbone
    layers, blocks = vla_backbone.decoder_layers, vla_backbone.vision_blocks
    in_units = {id(p) for unit in (*layers, *blocks) for p in unit.parameters()}
    total = sum(p.numel() for p in policy.parameters())
    llm_image, vision_tokens = image_tokens(vla_backbone, image_size)
    config = vla_backbone.config
    return _Profile(
        backbone=backbone,
        total_params=total,
        trainable_params=policy.num_trainable_parameters(),
        largest_unit_params=max((_numel(unit) for unit in (*layers, *blocks)), default=0),
        root_params=sum(p.numel() for p in policy.parameters() if id(p) not in in_units),
        lm_head_params=0
        if vla_backbone.encode_runs_lm_head
        else sum(p.numel() for p in vla_backbone.unused_parameters()),
        largest_tensor_params=max(p.numel() for p in policy.parameters()),
        language=_Tower(
            layers=len(layers),
            hidden=vla_backbone.hidden_size,
            heads=_heads(config.get_text_config()),
            tokens=llm_image + text_tokens,
            trainable=True,  # the head's gradient always flows through the language model
        ),
        vision=_Tower(
            layers=len(blocks),
            hidden=int(config.vision_config.hidden_size),
            heads=_heads(config.vision_config),
            tokens=vision_tokens,
            trainable=any(p.requires_grad for p in vla_backbone.vision_encoder.parameters()),
        ),
    )


# ---------------------------------------------------------------------- activations
def layer_activation_bytes(tokens: int, hidden: int, heads: int, *, attention_scores: bool = True) -> int:
    """Korthikanti et al. 2022: ``34·s·h + 5·a·s²`` bytes per layer and sample (16-bit)."""
    return 34 * tokens * hidden + (5 * heads * tokens * tokens if attention_scores else 0)


def activation_bytes(
    towers: tuple[_Tower, ...],
    *,
    micro_batch: int,
    checkpointing: bool,
    attention_scores: bool,
    compute_bytes: int,
) -> float:
    """Stored activations of one micro-batch across the trainable towers."""
    live = [t for t in towers if t.trainable and t.layers]
    full = [layer_activation_bytes(t.tokens, t.hidden, t.heads, attention_scores=attention_scores) for t in live]
    if checkpointing:
        per_sample = sum(t.layers * 2 * t.tokens * t.hidden for t in live) + max(full, default=0)
    else:
        per_sample = sum(t.layers * f for t, f in zip(live, full, strict=True))
    return micro_batch * per_sample * compute_bytes / 2


# ---------------------------------------------------------------------- recipe fields
def _section(recipe: dict[str, Any], key: str) -> dict[str, Any]:
    section = recipe.get(key) or {}
    if not isinstance(section, dict):
        raise RecipeError(f"recipe: '{key}' must be a mapping, got {type(section).__name__}")
    return dict(section.get("init_args", section)) if "class_path" in section else dict(section)


def _device_count(devices: Any) -> int | None:
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text.lstrip("-").isdigit():
            return _device_count(int(text))
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
    return None


def _world_size(trainer: dict[str, Any], gpus: int | None) -> int:
    if gpus is not None:
        if gpus < 1:
            raise ConfigError(f"gpus: expected a positive integer, got {gpus}")
        return int(gpus)
    devices = _device_count(trainer.get("devices", 1))
    if devices is None:
        raise ConfigError(f"trainer.devices is {trainer.get('devices')!r}; pass the number of GPUs (gpus=…)")
    return devices * int(trainer.get("num_nodes", 1) or 1)


def _is_sharded(trainer: dict[str, Any]) -> bool:
    strategy = trainer.get("strategy", "auto")
    name = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy)
    return name.rsplit(".", 1)[-1] in _SHARDED_STRATEGIES or name.lower().startswith("fsdp")


def _dtype_name(value: Any, what: str) -> str:
    name = str(value).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ConfigError(f"{what}: expected one of {sorted(_DTYPE_BYTES)}, got {value!r}")
    return name


def recipe_label(path: str | os.PathLike) -> str:
    """``calvin/qwen3-vl-2b`` for a file under ``recipes/``; the path as given otherwise."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(RECIPES_DIR).with_suffix("").as_posix()
    except ValueError:
        return os.fspath(path)


# ---------------------------------------------------------------------- estimate
def estimate_memory(
    recipe: dict[str, Any] | str | os.PathLike,
    *,
    gpus: int | None = None,
    name: str | None = None,
    text_tokens: int = DEFAULT_TEXT_TOKENS,
    attention_scores: bool = True,
    gpu_memory_gb: float = A100_80GB,
) -> MemoryEstimate:
    """Estimated per-GPU memory of training ``recipe`` (a loaded recipe or a recipe path).

    Args:
        recipe: the mapping `load_recipe` returns, or a path to a recipe file.
        gpus: total GPUs (overrides ``trainer.devices × trainer.num_nodes``).
        name: label of the estimate (default: the recipe path, or the backbone name).
        text_tokens: prompt and instruction tokens added to the image tokens.
        attention_scores: count the ``5·a·s²`` attention-score term (False for fused
            attention kernels that do not store the scores).
        gpu_memory_gb: capacity ``fits`` compares against (A100-80GB by default).
    """
    if not isinstance(recipe, dict):
        name = name or recipe_label(recipe)
        recipe = load_recipe(recipe)
    from vlm4vla.training.module import VLAModule

    # The LightningModule reads the recipe's model section exactly as training does.
    module = VLAModule(**_section(recipe, "model"))
    model = module.hparams
    trainer = _section(recipe, "trainer")
    data = _section(recipe, "data")

    world = _world_size(trainer, gpus)
    sharded = _is_sharded(trainer)
    shards = world if sharded else 1
    precision = str(trainer.get("precision", "32-true"))
    if precision not in _MASTER_DTYPE:
        raise ValueError(f"trainer.precision: cannot size {precision!r}; expected one of {sorted(_MASTER_DTYPE)}")
    master = _MASTER_DTYPE[precision]
    fsdp_dtype = model.get("fsdp_param_dtype")
    if sharded and fsdp_dtype is not None:
        compute = _dtype_name(fsdp_dtype, "model.fsdp_param_dtype")
    else:
        compute = _COMPUTE_DTYPE.get(precision, master)
    micro_batch = int(data.get("batch_size", 1))
    if micro_batch < 1:
        raise ConfigError(f"data.batch_size: expected a positive integer, got {micro_batch}")

    profile = _profile_of(module.vla_config, text_tokens)
    master_bytes, compute_bytes = _DTYPE_BYTES[master], _DTYPE_BYTES[compute]
    checkpointing = bool(model["activation_checkpointing"])

    # FSDP2 over several ranks builds on the meta device, without the never-run LM head; rank 0
    # alone reads the weights (one fp32 copy in host RAM), the others hold one tensor at a time.
    meta_build = sharded and world > 1
    head = profile.lm_head_params  # left out by every strategy
    host_before = profile.total_params * 4
    host_rank0 = host_before
    host_others = profile.largest_tensor_params * 4 if meta_build else host_before
    params = (profile.total_params - head) * master_bytes / shards
    grads = profile.trainable_params * master_bytes / shards
    optimizer = 2 * profile.trainable_params * master_bytes / shards
    # Without sharding nothing is gathered; under FSDP2 two units are in flight (prefetch).
    unsharded_layer = 2 * profile.largest_unit_params * compute_bytes if sharded else 0.0
    unsharded_root = (profile.root_params - head) * compute_bytes if sharded else 0.0
    activations = activation_bytes(
        (profile.language, profile.vision),
        micro_batch=micro_batch,
        checkpointing=checkpointing,
        attention_scores=attention_scores,
        compute_bytes=compute_bytes,
    )
    parts = [x / GIB for x in (params, grads, optimizer, unsharded_layer, unsharded_root, activations)]
    return MemoryEstimate(
        recipe=name or profile.backbone,
        backbone=profile.backbone,
        world_size=world,
        sharded=sharded,
        micro_batch=micro_batch,
        sequence_length=profile.language.tokens,
        vision_tokens=profile.vision.tokens,
        master_dtype=master,
        compute_dtype=compute,
        activation_checkpointing=checkpointing,
        attention_scores=attention_scores,
        total_params=profile.total_params,
        trainable_params=profile.trainable_params,
        largest_unit_params=profile.largest_unit_params,
        root_params=profile.root_params,
        params_gb=parts[0],
        grads_gb=parts[1],
        optimizer_gb=parts[2],
        unsharded_layer_gb=parts[3],
        unsharded_root_gb=parts[4],
        activations_gb=parts[5],
        total_gb=sum(parts),
        lm_head_params=head,
        host_before_gb=host_before / GIB,
        host_rank0_gb=host_rank0 / GIB,
        host_others_gb=host_others / GIB,
        gpu_memory_gb=gpu_memory_gb,
        config=module.vla_config.to_dict(),
    )


__all__ = ["MemoryEstimate", "estimate_memory", "image_tokens", "layer_activation_bytes", "recipe_label"]

"""`VLAConfig`: the one serialisable description of a policy.

Training (`VLAModule`), the memory estimator, `vlm4vla params`, `vlm4vla export` and the bundle
all build a policy from a `VLAConfig` through `create_policy`, and a bundle's
``vla_config.json`` is ``VLAConfig.to_dict()`` plus a format version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vlm4vla.errors import ConfigError

WEIGHTS = ("pretrained", "random", "meta")
Weights = Literal["pretrained", "random", "meta"]

# Switches that reproduce a behaviour of the released VLM4VLA code (CladernyJorn/VLM4VLA) where
# it departs from the stock model. Each is one recipe key and one `VLAConfig` field; ``None``
# (the default) means the stock behaviour, the first value listed. Which families accept which
# switch is declared by the backbone classes (``VLABackbone.switches``).
BACKBONE_SWITCHES: dict[str, tuple[Any, ...]] = {
    # "1d": the language model gets 1-D positions and no M-RoPE on image tokens
    # (vlm4vla/model/backbone/roboqwen25vl.py, roboqwen3vl_internal.py, roboqwen3vlmoe.py).
    "qwen_positions": ("mrope", "1d"),
    # "causal": no token_type_ids, the image prefix is causal (robopaligemma.py + base_backbone.py).
    "paligemma_attention": ("prefix", "causal"),
    # "released": the literal prompt of vlm4vla/data/data_utils.py through the plain tokenizer.
    "kosmos2_prompt": ("paper", "released"),
    # False: no DeepStack features into the language model (roboqwen3vlmoe.py).
    "deepstack": (True, False),
}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA through peft. ``target_modules=None`` means the family's language-model projections;
    ``include_experts`` adds MoE expert weights (3-D parameters) for MoE families; peft's
    parameter adapters need ``dropout=0`` (the default, as in OpenVLA's LoRA recipe)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] | None = None
    include_experts: bool = True

    @classmethod
    def for_rank(cls, rank: int, alpha: int | None = None) -> LoraSettings | None:
        """The recipes' ``lora_rank`` / ``lora_alpha`` (α defaults to 2·rank); ``None`` for rank 0."""
        rank = int(rank or 0)
        if rank < 0:
            raise ConfigError(f"lora_rank: expected ≥ 0, got {rank}")
        return cls(rank=rank, alpha=int(alpha) if alpha else 2 * rank) if rank else None


@dataclass(frozen=True)
class VLAConfig:
    """What a policy is: backbone, initial weights, inputs, chunk size, loss and training switches.

    Args:
        backbone: a preset name (``qwen3-vl-2b`` …), ``tiny:<family>[/<variant>]`` (tiny
            random model for tests and the quickstart) or a registered family name (with
            ``backbone_config``).
        weights: initial weights: ``pretrained`` (hub id or ``backbone_path``), ``random``
            (from scratch) or ``meta`` (sizing, no memory).
        backbone_path: a local directory with the VLM weights and processor.
        backbone_config: the Hugging Face model configuration; when set (bundles) the
            architecture is built from it, offline, and the caller loads the weights.
        prompt_scheme / image_size: backbone input options (Qwen long/short; 224/512/768).
        chunk_size: N, actions predicted per query.
        gripper_loss_weight: λ of the gripper BCE.
        freeze_vision_encoder / freeze_word_embeddings / freeze_llm / lora: training switches.
        normalizer: the action normaliser (its ``to_dict()``), inverted by ``predict_chunk``.
        image_pipeline: what the training images went through (dataset, stored frame size,
            training resize, random-crop area; the datamodule's ``image_pipeline()``), so that
            evaluation renders and crops alike. ``None``: not recorded (older bundles).
        qwen_positions / paligemma_attention / kosmos2_prompt / deepstack: the released code's
            behaviours (`BACKBONE_SWITCHES`); ``None`` = the stock model. Each applies to some
            families only and is refused for the others. A policy's `config` (and so a bundle)
            records the value its backbone uses.
    """

    backbone: str = "qwen3-vl-2b"
    weights: Weights = "pretrained"
    backbone_path: str | None = None
    backbone_config: dict[str, Any] | None = None
    prompt_scheme: str | None = None
    image_size: int = 224
    chunk_size: int = 10
    gripper_loss_weight: float = 0.01
    freeze_vision_encoder: bool = False
    freeze_word_embeddings: bool = False
    freeze_llm: bool = False
    lora: LoraSettings | None = None
    normalizer: dict[str, Any] | None = None
    image_pipeline: dict[str, Any] | None = None
    qwen_positions: str | None = None
    paligemma_attention: str | None = None
    kosmos2_prompt: str | None = None
    deepstack: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError(f"backbone: expected a preset or family name, got {self.backbone!r}")
        if self.weights not in WEIGHTS:
            raise ConfigError(f"weights: expected one of {WEIGHTS}, got {self.weights!r}")
        if int(self.chunk_size) < 1:
            raise ConfigError(f"chunk_size: expected ≥ 1, got {self.chunk_size}")
        if int(self.image_size) < 1:
            raise ConfigError(f"image_size: expected a positive side length, got {self.image_size}")
        if isinstance(self.lora, Mapping):
            object.__setattr__(self, "lora", LoraSettings(**self.lora))
        for name, allowed in BACKBONE_SWITCHES.items():
            value = getattr(self, name)
            if value is not None and (type(value) is not type(allowed[0]) or value not in allowed):
                raise ConfigError(f"{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")

    @property
    def family(self) -> str:
        """The registered backbone family (``qwen3-vl`` for ``qwen3-vl-2b`` or ``tiny:qwen3-vl``)."""
        from vlm4vla.backbones.factory import backbone_family

        return backbone_family(self.backbone)

    def switches(self) -> dict[str, Any]:
        """The released-code switches that are set (not ``None``)."""
        return {name: getattr(self, name) for name in BACKBONE_SWITCHES if getattr(self, name) is not None}

    def check_switches(self) -> dict[str, Any]:
        """Refuse a switch set for a family it does not apply to; the values the backbone will use."""
        from vlm4vla.backbones.base import get_backbone

        return get_backbone(self.family).resolve_switches(self.switches())

    def replace(self, **changes: Any) -> VLAConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (``from_dict`` inverts it)."""
        out = dataclasses.asdict(self)
        out["lora"] = dataclasses.asdict(self.lora) if self.lora is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> VLAConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown VLAConfig field(s) {unknown}; expected some of {sorted(names)}")
        return cls(**dict(data))


__all__ = ["BACKBONE_SWITCHES", "WEIGHTS", "LoraSettings", "VLAConfig"]

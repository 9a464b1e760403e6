"""`create_backbone`: a backbone by preset name, ``tiny:<family>`` or family + HF configuration."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from vlm4vla.backbones.base import VLABackbone, get_backbone, list_backbones


def backbone_family(name: str) -> str:
    """The registered family of a preset name, ``tiny:<family>[/<variant>]`` or family name."""
    from vlm4vla.backbones.presets import get_preset

    if name.startswith("tiny:"):
        return name.removeprefix("tiny:").partition("/")[0]
    if name in list_backbones():
        return name
    return get_preset(name).backbone


def create_backbone(
    name: str,
    *,
    weights: Literal["pretrained", "random", "meta"] = "pretrained",
    path: str | os.PathLike | None = None,
    hf_config: dict[str, Any] | None = None,
    processor: Any = None,
    prompt_scheme: str | None = None,
    image_size: int = 224,
    switches: Mapping[str, Any] | None = None,
) -> VLABackbone:
    """Build a backbone.

    * ``hf_config`` given (bundles): that architecture of ``name``'s family, offline, with
      ``processor``; the model's own init (the caller loads its weights) or on meta for
      ``weights="meta"``;
    * ``tiny:<family>[/<variant>]``: a tiny random model with an in-process tokenizer
      (``weights="random"`` re-draws it as from-scratch training does);
    * a preset name: `Preset.build` with ``weights`` and ``path``.

    ``switches`` are the released-code switches (`vlm4vla.policy.config.BACKBONE_SWITCHES`);
    one set for a family it does not apply to is refused before anything is built.
    """
    from vlm4vla.backbones.presets import get_preset

    get_backbone(backbone_family(name)).resolve_switches(switches)
    options: dict[str, Any] = {"prompt_scheme": prompt_scheme, "image_size": image_size, "switches": switches}
    if hf_config is not None:
        cls = get_backbone(backbone_family(name))
        if weights == "meta":
            return cls.from_config(hf_config, device="meta", **options)
        if processor is None:
            raise ValueError(f"{name}: building a backbone from its configuration needs its processor")
        return cls.from_config(hf_config, processor=processor, **options)
    if name.startswith("tiny:"):
        family, _, variant = name.removeprefix("tiny:").partition("/")
        cls = get_backbone(family)
        variants = {**getattr(cls, "tiny_variants", {}), **getattr(cls, "sized_variants", {})}
        overrides = variants.get(variant, {}) if variant else {}
        backbone = cls.tiny(**options, **overrides)
        if weights == "random":
            backbone.init_from_scratch()
        return backbone
    if processor is not None and weights == "random":
        options["processor"] = processor
    return get_preset(name).build(weights, path=path, **options)


__all__ = ["backbone_family", "create_backbone"]

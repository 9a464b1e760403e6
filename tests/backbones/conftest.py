"""Tiny variants of every registered backbone (timm style: tests parametrise over all of them)."""

from __future__ import annotations

import pytest

from vlm4vla.backbones import get_backbone, list_backbones


def tiny_variants() -> list[tuple[str, dict]]:
    """(backbone name, tiny() overrides) for every registered family and its variants."""
    variants = []
    for name in list_backbones():
        cls = get_backbone(name)
        for _label, overrides in getattr(cls, "tiny_variants", {"": {}}).items():
            variants.append((name, overrides))
    return variants


def variant_id(variant: tuple[str, dict]) -> str:
    name, overrides = variant
    return name + "".join(f"-{v}" for v in overrides.values())


TINY_VARIANTS = tiny_variants()


@pytest.fixture(params=TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS], scope="module")
def tiny_backbone(request):
    name, overrides = request.param
    return get_backbone(name).tiny(**overrides)

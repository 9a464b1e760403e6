"""The ActionQuery lands in exactly its slot: the input embeddings, captured as the language model
receives them, equal the learnable vector at the slot and the stock embedding everywhere else.

The oracle is independent of the backbone's hook: a forward hook registered *after* the
backbone's sees the rows the model actually consumes, and the stock rows come from the
embedding module's ``forward`` called directly (which runs no hooks). A query written one slot
early or late, into every copy of the placeholder token or into a padding row, fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.backbones.conftest import TINY_VARIANTS, variant_id
from vlm4vla.backbones import get_backbone, list_backbones

# Three prompt lengths, so two of the three samples are right-padded past their slot.
INSTRUCTIONS = [
    "pick up the black bowl",
    "open the top drawer of the cabinet and put the black bowl inside it",
    "stop",
]


def _images(n: int, size: int = 96) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class _Capture:
    """Forward hook recording (input ids, output rows) of every call of the embedding module."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, module, args, output) -> None:
        self.calls.append((args[0].detach().clone(), output.detach().clone()))


def _stock(embedding: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The embedding of ``ids`` without any hook (``Module.forward`` called directly)."""
    with torch.no_grad():
        rows = embedding.forward(ids)
    if type(embedding) is torch.nn.Embedding:  # a plain table: the row lookup itself
        assert torch.equal(rows, embedding.weight[ids])
    return rows


def _expected_slots(inputs) -> torch.Tensor:
    """The ActionQuery slot of each sample, from the right-padded attention mask alone."""
    mask = inputs["attention_mask"].bool()
    slots = mask.sum(dim=1) - 1
    for b, slot in enumerate(slots.tolist()):
        assert bool(mask[b, : slot + 1].all()) and not bool(mask[b, slot + 1 :].any()), "not right-padded"
    return slots


def test_every_registered_family_is_covered():
    assert {name for name, _ in TINY_VARIANTS} == set(list_backbones())


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS])
def test_action_query_replaces_exactly_its_embedding_row(variant):
    name, overrides = variant
    backbone = get_backbone(name).tiny(**overrides).eval()
    embedding = backbone.model.get_input_embeddings()
    inputs = backbone.prepare_inputs(_images(len(INSTRUCTIONS)), INSTRUCTIONS)
    ids = inputs["input_ids"]
    slots = _expected_slots(inputs)
    assert len(set(slots.tolist())) == len(INSTRUCTIONS), "the test needs prompts of different lengths"
    assert torch.equal(inputs["action_query_index"], slots)
    aq_id = backbone.action_query_token_id(backbone.processor)
    assert torch.equal(ids[torch.arange(len(slots)), slots], torch.full_like(slots, aq_id))

    # Far from every embedding row, so it cannot equal a stock row by accident.
    query = torch.randn(backbone.hidden_size, generator=torch.Generator().manual_seed(7)) * 5 + 3
    capture = _Capture()
    handle = embedding.register_forward_hook(capture)  # runs after the backbone's own hook
    try:
        with torch.no_grad():
            backbone(inputs, query)
    finally:
        handle.remove()

    assert len(capture.calls) == 1, f"{name}: the input embeddings ran {len(capture.calls)} times in one forward"
    seen_ids, rows = capture.calls[0]
    same_ids = torch.equal(seen_ids, ids)
    assert same_ids, f"{name}: the language model did not embed the prepared input_ids"
    stock = _stock(embedding, ids)
    assert rows.shape == stock.shape == (*ids.shape, backbone.hidden_size)

    at_slot = torch.zeros(ids.shape, dtype=torch.bool)
    at_slot[torch.arange(len(slots)), slots] = True
    for b, slot in enumerate(slots.tolist()):
        is_query = torch.equal(rows[b, slot], query.to(rows.dtype))
        assert is_query, f"{name}: sample {b}: the row at its slot {slot} is not the ActionQuery vector"
        assert not torch.equal(stock[b, slot], query.to(stock.dtype))
    others = ~at_slot
    mismatched = (rows != stock).any(dim=-1) & others
    assert not bool(mismatched.any()), (
        f"{name}: rows other than the ActionQuery slot changed at (sample, position) "
        f"{mismatched.nonzero().tolist()}; slots {slots.tolist()}"
    )
    # Padding rows past a shorter sample's slot are among the stock rows checked above.
    assert int((~inputs["attention_mask"].bool()).sum()) > 0


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS])
def test_no_query_outside_the_backbone_forward(variant):
    """Once ``forward`` returns, the hook is inert: a plain model call embeds every row as stock."""
    name, overrides = variant
    backbone = get_backbone(name).tiny(**overrides).eval()
    embedding = backbone.model.get_input_embeddings()
    inputs = backbone.prepare_inputs(_images(2), INSTRUCTIONS[:2])
    with torch.no_grad():
        backbone(inputs, torch.full((backbone.hidden_size,), 4.0))
    plain = {k: v for k, v in inputs.items() if k != "action_query_index"}
    capture = _Capture()
    handle = embedding.register_forward_hook(capture)
    try:
        with torch.no_grad():
            backbone.encode(plain)
    finally:
        handle.remove()
    assert len(capture.calls) == 1
    seen_ids, rows = capture.calls[0]
    assert torch.equal(rows, _stock(embedding, seen_ids))

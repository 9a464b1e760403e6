"""The released-code switches: each changes exactly what it says, checked against hand-built
expectations, and the stock setting leaves the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm4vla.backbones import get_backbone, list_backbones
from vlm4vla.backbones.factory import create_backbone
from vlm4vla.errors import ConfigError
from vlm4vla.policy.config import BACKBONE_SWITCHES, VLAConfig

# Different token lengths, so the batch is padded on the right.
INSTRUCTIONS = ["pick up the black bowl and place it on the plate", "go"]
QWEN = ["qwen2.5-vl", "qwen3-vl", "qwen3-vl-moe"]
QWEN3 = ["qwen3-vl", "qwen3-vl-moe"]


def _images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def _query(backbone) -> torch.Tensor:
    return torch.randn(backbone.hidden_size, generator=torch.Generator().manual_seed(0))


def _hidden(backbone, inputs) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval()(inputs, _query(backbone))


def _language_model_kwargs(backbone, inputs) -> dict:
    """The keyword arguments the language model is called with (after the backbone's own hooks)."""
    seen: dict = {}
    handle = backbone.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    try:
        _hidden(backbone, inputs)
    finally:
        handle.remove()
    return seen


# ---------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("family", list_backbones())
def test_stock_values_are_the_defaults_and_change_nothing(family):
    cls = get_backbone(family)
    stock = {name: BACKBONE_SWITCHES[name][0] for name in cls.switch_names}
    plain, explicit = cls.tiny(), cls.tiny(switches=stock)
    assert plain.switches == explicit.switches == stock
    a, b = plain.prepare_inputs(_images(), INSTRUCTIONS), explicit.prepare_inputs(_images(), INSTRUCTIONS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.testing.assert_close(_hidden(plain, a), _hidden(explicit, b), rtol=0, atol=0)


# ---------------------------------------------------------------------------- qwen_positions
def _expected_1d_positions(family: str, attention_mask: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Hand-built released positions (B, L) for our layout [prompt][ActionQuery][padding]."""
    bsz, length = attention_mask.shape
    expected = torch.empty(bsz, length, dtype=torch.long)
    for b in range(bsz):
        n = int(slot[b])  # prompt tokens before the ActionQuery
        if family == "qwen2.5-vl":
            # get_rope_index without input_ids: cumsum(mask) - 1 over attended tokens, padding → 1.
            expected[b] = torch.tensor(list(range(n + 1)) + [1] * (length - n - 1))
        else:
            # arange(L) over the released row [prompt][padding][ActionQuery]: the prompt keeps
            # 0…n-1 and the ActionQuery, the last token there, gets L - 1; our padding (after
            # the ActionQuery) is masked, its positions do not matter (arange here).
            expected[b] = torch.arange(length)
            expected[b, n] = length - 1
    return expected


@pytest.mark.parametrize("family", QWEN)
def test_qwen_1d_positions_are_the_released_ones(family):
    cls = get_backbone(family)
    stock, released = cls.tiny(), cls.tiny(switches={"qwen_positions": "1d"})
    inputs = released.prepare_inputs(_images(), INSTRUCTIONS)
    mask, slot = inputs["attention_mask"], inputs["action_query_index"]
    assert int(mask[1].sum()) < mask.shape[1], "the test needs a padded sample"
    expected = _expected_1d_positions(family, mask, slot)

    seen = _language_model_kwargs(released, inputs)["position_ids"]
    assert seen.shape == (3, *mask.shape)
    for axis in range(3):  # the same on t, h, w: plain 1-D RoPE, no M-RoPE on image tokens
        real = mask.bool()
        assert torch.equal(seen[axis][real], expected[real])

    # The stock model gives image tokens 2-D grid positions (M-RoPE) instead.
    stock_seen = _language_model_kwargs(stock, inputs)["position_ids"]
    image = inputs["mm_token_type_ids"][0].bool()
    assert not torch.equal(stock_seen[1, 0, image], stock_seen[2, 0, image])

    # Only the positions change: the stock model given these positions gives the same output.
    stock.model_inputs = lambda inp, index: {**inp, "position_ids": expected.unsqueeze(0).expand(3, -1, -1)}
    torch.testing.assert_close(_hidden(released, inputs), _hidden(stock, inputs), rtol=0, atol=0)
    assert not torch.allclose(_hidden(released, inputs), _hidden(cls.tiny(), inputs))


def test_qwen3_1d_positions_depend_on_the_padding_as_released():
    """The released Qwen3 row puts the ActionQuery after the padding, so a sample's output
    depends on the longest prompt of its batch; Qwen2.5's cumsum positions do not."""
    for family, invariant in (("qwen2.5-vl", True), ("qwen3-vl", False)):
        backbone = get_backbone(family).tiny(switches={"qwen_positions": "1d"})
        batched = _hidden(backbone, backbone.prepare_inputs(_images(), INSTRUCTIONS))[1]
        single = _hidden(backbone, backbone.prepare_inputs(_images()[1:], INSTRUCTIONS[1:]))[0]
        assert torch.allclose(batched, single, atol=1e-4, rtol=1e-4) == invariant, family


# ---------------------------------------------------------------------------- deepstack
@pytest.mark.parametrize("family", QWEN3)
def test_deepstack_off_drops_exactly_the_deepstack_features(family):
    cls = get_backbone(family)
    off, on = cls.tiny(switches={"deepstack": False}), cls.tiny()
    inputs = off.prepare_inputs(_images(), INSTRUCTIONS)
    seen_off, seen_on = _language_model_kwargs(off, inputs), _language_model_kwargs(on, inputs)
    assert seen_off["deepstack_visual_embeds"] is None and seen_off["visual_pos_masks"] is None
    assert len(seen_on["deepstack_visual_embeds"]) == len(on.config.vision_config.deepstack_visual_indexes)
    torch.testing.assert_close(seen_off["position_ids"], seen_on["position_ids"], rtol=0, atol=0)
    assert not torch.allclose(_hidden(off, inputs), _hidden(on, inputs))

    # Equivalent: the stock model whose DeepStack mergers output zeros (last projection zeroed)
    # adds nothing to the image tokens' hidden states.
    zeroed = cls.tiny()
    for merger in zeroed.model.model.visual.deepstack_merger_list:
        merger.linear_fc2.weight.data.zero_()
        merger.linear_fc2.bias.data.zero_()
    torch.testing.assert_close(_hidden(off, inputs), _hidden(zeroed, inputs), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- paligemma_attention
@pytest.mark.parametrize("variant", ["paligemma-1", "paligemma-2"])
def test_paligemma_causal_removes_the_bidirectional_image_prefix(variant):
    cls = get_backbone("paligemma")
    overrides = cls.tiny_variants[variant]
    prefix, causal = cls.tiny(**overrides), cls.tiny(switches={"paligemma_attention": "causal"}, **overrides)
    prefix_inputs = prefix.prepare_inputs(_images(), INSTRUCTIONS)
    causal_inputs = causal.prepare_inputs(_images(), INSTRUCTIONS)
    # The inputs differ only by token_type_ids.
    assert set(prefix_inputs) - set(causal_inputs) == {"token_type_ids"} and set(causal_inputs) <= set(prefix_inputs)
    assert all(torch.equal(causal_inputs[k], prefix_inputs[k]) for k in causal_inputs)

    mask = prefix_inputs["attention_mask"].bool()
    length = mask.shape[1]
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    image = torch.arange(length) < 256  # <image>×256 come first
    for inputs, backbone, bidirectional in ((prefix_inputs, prefix, True), (causal_inputs, causal, False)):
        seen = _language_model_kwargs(backbone, inputs)["attention_mask"]
        seen = seen["full_attention"] if isinstance(seen, dict) else seen
        seen = seen if seen.dtype == torch.bool else seen == 0  # eager (Gemma 2): an additive float mask
        for b in range(mask.shape[0]):
            allowed = (j <= i) | ((image[:, None] & image[None, :]) if bidirectional else False)
            allowed = allowed & mask[b][None, :]
            real = mask[b]
            assert torch.equal(seen[b, 0][real], allowed[real]), (variant, bidirectional, b)
    assert not torch.allclose(_hidden(prefix, prefix_inputs), _hidden(causal, causal_inputs))


# ---------------------------------------------------------------------------- kosmos2_prompt
def test_kosmos2_released_prompt_is_the_literal_string():
    cls = get_backbone("kosmos-2")
    paper, released = cls.tiny(), cls.tiny(switches={"kosmos2_prompt": "released"})
    tokenizer = released.processor.tokenizer
    inputs = released.prepare_inputs(_images(), ["  pick up the cube \n", "go"])
    paper_inputs = paper.prepare_inputs(_images(), ["pick up the cube", "go"])
    torch.testing.assert_close(inputs["pixel_values"], paper_inputs["pixel_values"], rtol=0, atol=0)

    # 64 image slots first (the released code puts the 64 image embeddings before the text) …
    slots = inputs["image_embeds_position_mask"][0]
    assert slots[:64].tolist() == [1] * 64 and int(slots.sum()) == 64
    # … then the literal text through the plain tokenizer (this tiny tokenizer adds no <s>/</s>
    # of its own; the real XLM-R one adds both): <image_pad>, <p>, </p> are not tokens and
    # split into pieces, the "\n" survives (no </phrase> to absorb it), then the ActionQuery.
    tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0, 64:].tolist())
    assert tokens == [
        "<s>", "<image>", "<", "i", "m", "a", "g", "e", "_", "p", "a", "d", ">", "</image>", "<", "p", ">",
        "pick", "Ġup", "Ġthe", "Ġcube", "Ċ", "<", "/", "p", ">", released.action_query_token,
    ]
    literal = tokenizer("<s><image><image_pad></image><p>go\n</p>")["input_ids"]
    assert inputs["input_ids"][1, 64 : 64 + len(literal)].tolist() == literal
    slot = inputs["action_query_index"]
    assert slot.tolist() == [64 + len(tokens) - 1, 64 + len(literal)]
    assert inputs["attention_mask"].sum(1).tolist() == [n + 1 for n in slot.tolist()]
    assert "<phrase>" not in tokens and "<phrase>" in tokenizer.convert_ids_to_tokens(paper_inputs["input_ids"][0])
    assert not torch.allclose(_hidden(released, inputs), _hidden(paper, paper_inputs))


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("backbone", "switches", "message"),
    [
        ("tiny:paligemma", {"qwen_positions": "1d"}, r"^qwen_positions: applies to the qwen2\.5-vl, qwen3-vl, "
                                                     r"qwen3-vl-moe backbone\(s\) only, not paligemma$"),
        ("tiny:qwen2.5-vl", {"deepstack": False}, r"^deepstack: applies to the qwen3-vl, qwen3-vl-moe backbone\(s\) "
                                                  r"only, not qwen2\.5-vl$"),
        ("tiny:kosmos-2", {"paligemma_attention": "prefix"}, r"^paligemma_attention: applies to the paligemma "),
        ("tiny:qwen3-vl", {"kosmos2_prompt": "released"}, r"^kosmos2_prompt: applies to the kosmos-2 "),
        ("qwen3-vl-30b-a3b", {"paligemma_attention": "causal"}, r"^paligemma_attention: .* not qwen3-vl-moe$"),
    ],
)
def test_a_switch_for_another_family_is_refused_in_one_line(backbone, switches, message):
    with pytest.raises(ConfigError, match=message):
        create_backbone(backbone, weights="meta", switches=switches)
    with pytest.raises(ConfigError, match=message):
        VLAConfig(backbone=backbone, **switches).check_switches()


@pytest.mark.parametrize(
    ("switches", "message"),
    [
        ({"qwen_positions": "2d"}, r"^qwen_positions: expected one of 'mrope', '1d', got '2d'$"),
        ({"deepstack": "no"}, r"^deepstack: expected one of True, False, got 'no'$"),
        ({"deepstack": 0}, r"^deepstack: expected one of True, False, got 0$"),
    ],
)
def test_a_bad_switch_value_is_refused_in_one_line(switches, message):
    with pytest.raises(ConfigError, match=message):
        VLAConfig(backbone="tiny:qwen3-vl", **switches)
    with pytest.raises(ConfigError, match=message):
        get_backbone("qwen3-vl").resolve_switches(switches)

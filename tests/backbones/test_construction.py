"""The three ways to build a backbone: real weights from a directory, random init, meta device."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.backbones.conftest import TINY_VARIANTS, variant_id
from vlm4vla.backbones import get_backbone
from vlm4vla.backbones.factory import create_backbone
from vlm4vla.backbones.presets import Preset, get_preset, list_presets
from vlm4vla.registry import UnknownNameError

# Reference data: backbones.json "total_params" (transformers 5.23, meta device) = paper Table 9.
PAPER_BACKBONE_PARAMS = {
    "qwen2.5-vl-3b": 3_754_622_976,
    "qwen2.5-vl-7b": 8_292_166_656,
    "qwen3-vl-2b": 2_127_532_032,
    "qwen3-vl-4b": 4_437_815_808,
    "qwen3-vl-8b": 8_767_123_696,
    "qwen3-vl-30b-a3b": 31_070_754_032,
    "paligemma-3b": 2_923_466_480,
    "paligemma2-3b": 3_032_242_416,
    "kosmos-2": 1_664_485_376,
}


def test_presets_are_the_nine_paper_backbones():
    assert sorted(PAPER_BACKBONE_PARAMS) == list_presets()


def test_unknown_preset_lists_valid_names():
    with pytest.raises(UnknownNameError, match="qwen3-vl-2b"):
        get_preset("qwen3-vl-3b")


@pytest.mark.parametrize("name", sorted(PAPER_BACKBONE_PARAMS))
def test_meta_device_build_matches_paper_size(name):
    backbone = get_preset(name).build("meta")
    assert backbone.device.type == "meta"
    assert sum(p.numel() for p in backbone.model.parameters()) == PAPER_BACKBONE_PARAMS[name]
    assert backbone.decoder_layers, "FSDP needs the decoder layers"
    assert backbone.vision_blocks, "FSDP needs the vision blocks"
    assert len(backbone.decoder_layers) == backbone.config.get_text_config().num_hidden_layers


def _save_tiny(tmp_path, name, overrides):
    backbone = get_backbone(name).tiny(**overrides)
    backbone.model.save_pretrained(tmp_path)
    backbone.processor.save_pretrained(tmp_path)
    return backbone


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to reach the hub fails the test."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to download: {args} {kwargs}")

    for fn in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, fn, refuse)
        monkeypatch.setattr(f"huggingface_hub.file_download.{fn}" if fn == "hf_hub_download" else
                            "huggingface_hub._snapshot_download.snapshot_download", refuse)


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS])
def test_from_pretrained_local_directory_round_trips(tmp_path, variant, no_downloads):
    name, overrides = variant
    original = _save_tiny(tmp_path, name, overrides).eval()
    loaded = get_backbone(name).from_pretrained(tmp_path).eval()
    images = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    a_inputs = original.prepare_inputs(images, ["pick up cube"])
    b_inputs = loaded.prepare_inputs(images, ["pick up cube"])
    for key in a_inputs:
        torch.testing.assert_close(a_inputs[key], b_inputs[key])
    query = torch.randn(original.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(original(a_inputs, query), loaded(b_inputs, query))


def test_from_pretrained_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        get_backbone("qwen3-vl").from_pretrained(tmp_path / "nope")


def test_random_weights_preset_is_from_scratch(tmp_path, no_downloads):
    """weights="random" keeps the architecture and processor but re-draws every weight matrix."""
    tiny = _save_tiny(tmp_path, "qwen3-vl", {})
    preset = Preset(
        name="tiny-qwen3-vl", backbone="qwen3-vl", hub_id=str(tmp_path), config=tiny.config.to_dict(),
        backbone_params=0, paper_head_params="",
    )
    pretrained = preset.build("pretrained")
    torch.manual_seed(123)
    scratch = preset.build("random")
    saved = dict(tiny.model.named_parameters())
    for name, param in pretrained.model.named_parameters():
        torch.testing.assert_close(param, saved[name])
    changed = 0
    for name, param in scratch.model.named_parameters():
        assert param.shape == saved[name].shape
        constant_init = bool((saved[name] == saved[name].flatten()[0]).all())  # norms (ones), biases (zeros)
        if not constant_init:
            assert not torch.equal(param, saved[name]), name
            changed += 1
    assert changed > 10
    for name, module in scratch.model.named_modules():  # Xavier-uniform, as the released from-scratch runs
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            assert float(weight.detach().abs().max()) <= _xavier_bound(weight.shape) * (1 + 1e-6), name
    assert scratch.processor.tokenizer.get_vocab() == pretrained.processor.tokenizer.get_vocab()


def test_bad_preset_weights_mode():
    with pytest.raises(ValueError, match="weights"):
        get_preset("kosmos-2").build("half")


def _xavier_bound(shape: torch.Size) -> float:
    """Xavier-uniform bound √(6 / (fan_in + fan_out)) of a (out, in, *kernel) weight (an
    Embedding (num, dim) counts dim as fan-in and num as fan-out, as torch does)."""
    receptive = math.prod(shape[2:])
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    return math.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS])
def test_from_scratch_is_xavier_on_every_weight_matrix(variant):
    """weights="random": every module weight with ≥ 2 dims is Xavier-uniform with a zero bias (the
    released ``initialize_param``); everything else keeps the model's own init."""
    name, overrides = variant
    label = next((k for k, v in getattr(get_backbone(name), "tiny_variants", {}).items() if v == overrides), "")
    scratch = create_backbone(f"tiny:{name}" + (f"/{label}" if label else ""), weights="random")
    hf_init = get_backbone(name).tiny(**overrides)  # same seed: the init before the re-draw
    before = dict(hf_init.model.named_parameters())
    params = {n: p.detach() for n, p in scratch.model.named_parameters()}
    matrices = {n for n, p in params.items() if n.endswith("weight") and p.dim() >= 2}
    biases = {n.removesuffix("weight") + "bias" for n in matrices} & set(params)
    assert matrices and len(matrices) > 10
    for n in sorted(matrices):
        weight = params[n]
        bound = _xavier_bound(weight.shape)
        assert float(weight.abs().max()) <= bound * (1 + 1e-6), n
        # U(-a, a) has std a/√3; the sample std of n draws is within ~0.45/√n of it (relative).
        std, expected = float(weight.std()), bound / math.sqrt(3)
        assert abs(std / expected - 1) < 2.5 / math.sqrt(weight.numel()) + 0.01, (n, std, expected)
        assert not torch.equal(weight, before[n]), n
    for n in sorted(biases):
        assert not params[n].any(), n
    for n in sorted(set(params) - matrices - biases):  # norms, other biases, MoE experts, latent queries…
        assert torch.equal(params[n], before[n]), n
    if name == "qwen3-vl-moe":
        assert any(n.endswith("experts.gate_up_proj") for n in set(params) - matrices)


def test_from_scratch_is_a_no_op_on_meta():
    backbone = get_preset("kosmos-2").build("meta")
    backbone.init_from_scratch()
    assert backbone.device.type == "meta"

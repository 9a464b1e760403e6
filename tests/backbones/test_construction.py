"""The three ways to build a backbone: real weights from a directory, random init, meta device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.backbones.conftest import TINY_VARIANTS, variant_id
from vlm4vla.backbones import get_backbone
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
    assert scratch.processor.tokenizer.get_vocab() == pretrained.processor.tokenizer.get_vocab()


def test_bad_preset_weights_mode():
    with pytest.raises(ValueError, match="weights"):
        get_preset("kosmos-2").build("half")

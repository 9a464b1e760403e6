"""`VLAConfig`: one description of a policy, shared by training, sizing, `vlm4vla params` and bundles."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from vlm4vla.cli.params import count_parameters
from vlm4vla.policy.action_space import GripperConvention, QuantileNormalizer
from vlm4vla.policy.bundle import CONFIG_NAME, PROCESSOR_DIR, WEIGHTS_NAME, BundleError
from vlm4vla.training.memory import estimate_memory
from vlm4vla.training.module import VLAModule
from vlm4vla.training.recipes import list_recipes, load_recipe

IMAGES = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)


def test_top_level_api_is_lazy():
    code = (
        "import sys, vlm4vla; assert 'torch' not in sys.modules and 'transformers' not in sys.modules;"
        "from vlm4vla import VLAConfig, VLAPolicy, create_policy, LoraSettings; print(VLAConfig().chunk_size)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "10", out.stderr[-2000:]


def test_create_policy_like_timm():
    from vlm4vla import VLAConfig, create_policy

    policy = create_policy("tiny:qwen3-vl", chunk_size=4, freeze_vision_encoder=True)
    assert policy.chunk_size == 4 and policy.spec == VLAConfig(backbone="tiny:qwen3-vl", chunk_size=4,
                                                                 freeze_vision_encoder=True)
    assert not any(p.requires_grad for p in policy.backbone.vision_encoder.parameters())
    same = create_policy(VLAConfig(backbone="tiny:qwen3-vl", chunk_size=4, freeze_vision_encoder=True))
    assert same.num_trainable_parameters() == policy.num_trainable_parameters()


def test_config_dict_round_trip_and_bad_fields():
    from vlm4vla import LoraSettings, VLAConfig

    config = VLAConfig(backbone="qwen3-vl-8b", weights="random", chunk_size=4, lora=LoraSettings.for_rank(8),
                       normalizer={"type": "identity", "gripper": {"kind": "unit", "threshold": 0.5}})
    as_json = json.loads(json.dumps(config.to_dict()))
    assert VLAConfig.from_dict(as_json) == config and as_json["lora"]["alpha"] == 16
    assert config.family == "qwen3-vl"
    with pytest.raises(ValueError, match=r"x\.json: unknown VLAConfig field\(s\) \['chunk'\]"):
        VLAConfig.from_dict({"chunk": 4}, source="x.json")
    with pytest.raises(ValueError, match="chunk_size: expected ≥ 1"):
        VLAConfig(chunk_size=0)
    with pytest.raises(ValueError, match="weights"):
        VLAConfig(weights="hub")


def _normalizer() -> QuantileNormalizer:
    actions = np.random.default_rng(1).normal(size=(50, 7))
    return QuantileNormalizer.from_actions(actions, gripper=GripperConvention("signed"))


def test_config_round_trips_through_a_bundle(tmp_path):
    from vlm4vla import LoraSettings, VLAConfig, VLAPolicy, create_policy

    config = VLAConfig(backbone="tiny:qwen2.5-vl", chunk_size=3, freeze_word_embeddings=True,
                       lora=LoraSettings(rank=2, alpha=4), normalizer=_normalizer().to_dict())
    policy = create_policy(config)
    policy.save_pretrained(tmp_path / "b")
    stored = json.loads((tmp_path / "b" / CONFIG_NAME).read_text())
    assert stored.pop("format_version") == 2
    # What the bundle stores is the config, with the architecture it was built with and the
    # resolved defaults (Qwen's prompt scheme "long", its stock M-RoPE positions).
    resolved = config.replace(backbone_config=stored["backbone_config"], prompt_scheme="long", qwen_positions="mrope")
    assert (stored["deepstack"], stored["paligemma_attention"], stored["kosmos2_prompt"]) == (None, None, None)
    assert VLAConfig.from_dict(stored) == resolved
    assert stored["backbone_config"]["text_config"]["hidden_size"] == policy.backbone.hidden_size
    loaded = VLAPolicy.from_pretrained(tmp_path / "b")
    assert loaded.config == policy.config
    assert loaded.spec.freeze_word_embeddings and loaded.lora_settings == LoraSettings(rank=2, alpha=4)
    torch.testing.assert_close(loaded.predict_chunk(IMAGES, ["a", "b"]), policy.predict_chunk(IMAGES, ["a", "b"]))


def test_format_1_bundles_still_load(tmp_path):
    """A bundle as vlm4vla wrote it before `VLAConfig` (format_version 1)."""
    from vlm4vla import VLAPolicy, create_policy

    policy = create_policy("tiny:kosmos-2", chunk_size=2, normalizer=_normalizer().to_dict())
    directory = tmp_path / "v1"
    directory.mkdir()
    backbone = policy.backbone
    (directory / CONFIG_NAME).write_text(json.dumps({
        "format_version": 1, "backbone": backbone.name, "backbone_config": backbone.config.to_dict(),
        "prompt_scheme": backbone.prompt_scheme, "image_size": backbone.image_size, "chunk_size": 2,
        "action_dim": 7, "gripper_loss_weight": 0.01, "lora": None, "normalizer": policy.normalizer.to_dict(),
    }))
    save_model(policy, str(directory / WEIGHTS_NAME))
    backbone.processor.save_pretrained(directory / PROCESSOR_DIR)
    loaded = VLAPolicy.from_pretrained(directory)
    assert loaded.config.backbone == "kosmos-2" and loaded.chunk_size == 2
    assert loaded.normalizer == policy.normalizer
    torch.testing.assert_close(loaded.predict_chunk(IMAGES, ["a", "b"]), policy.predict_chunk(IMAGES, ["a", "b"]))
    (directory / CONFIG_NAME).write_text(json.dumps({"format_version": 2, "backbone": "kosmos-2", "backbone_config": {}, "chunk_size": 2, "chunk": 2}))
    with pytest.raises(BundleError, match=r"vla_config\.json: unknown VLAConfig field\(s\) \['chunk'\]"):
        VLAPolicy.from_pretrained(directory)


@pytest.mark.parametrize(
    ("backbone", "switches", "recorded"),
    [
        ("tiny:qwen3-vl", {"qwen_positions": "1d", "deepstack": False}, {"qwen_positions": "1d", "deepstack": False}),
        ("tiny:qwen3-vl-moe", {}, {"qwen_positions": "mrope", "deepstack": True}),
        ("tiny:paligemma", {"paligemma_attention": "causal"}, {"paligemma_attention": "causal"}),
        ("tiny:kosmos-2", {"kosmos2_prompt": "released"}, {"kosmos2_prompt": "released"}),
    ],
)
def test_switches_are_recorded_in_the_bundle_and_rebuilt_from_it(tmp_path, backbone, switches, recorded):
    from vlm4vla import VLAConfig, VLAPolicy, create_policy

    policy = create_policy(VLAConfig(backbone=backbone, chunk_size=2, **switches))
    with torch.no_grad():
        policy.action_query.embedding.normal_()
    policy.save_pretrained(tmp_path / "b")
    stored = json.loads((tmp_path / "b" / CONFIG_NAME).read_text())
    expected = {"qwen_positions": None, "paligemma_attention": None, "kosmos2_prompt": None, "deepstack": None}
    assert {k: stored[k] for k in expected} == {**expected, **recorded}
    loaded = VLAPolicy.from_pretrained(tmp_path / "b")
    assert loaded.backbone.switches == policy.backbone.switches
    torch.testing.assert_close(loaded.predict_chunk(IMAGES, ["a b", "c"]), policy.predict_chunk(IMAGES, ["a b", "c"]))


def test_bundles_from_before_the_switches_load_with_the_stock_model(tmp_path):
    """A format-2 ``vla_config.json`` without the switch fields is the stock model."""
    from vlm4vla import VLAPolicy, create_policy

    policy = create_policy("tiny:paligemma", chunk_size=2)
    policy.save_pretrained(tmp_path / "b")
    path = tmp_path / "b" / CONFIG_NAME
    stored = json.loads(path.read_text())
    for key in ("qwen_positions", "paligemma_attention", "kosmos2_prompt", "deepstack"):
        del stored[key]
    path.write_text(json.dumps(stored))
    loaded = VLAPolicy.from_pretrained(tmp_path / "b")
    assert loaded.spec.paligemma_attention is None and loaded.backbone.switches == {"paligemma_attention": "prefix"}
    assert loaded.config.paligemma_attention == "prefix"
    torch.testing.assert_close(loaded.predict_chunk(IMAGES, ["a", "b"]), policy.predict_chunk(IMAGES, ["a", "b"]))


def test_a_bundle_with_a_switch_of_another_family_is_refused(tmp_path):
    from vlm4vla import VLAPolicy, create_policy

    create_policy("tiny:kosmos-2", chunk_size=2).save_pretrained(tmp_path / "b")
    path = tmp_path / "b" / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), "deepstack": False}))
    with pytest.raises(ValueError, match=r"^deepstack: applies to the qwen3-vl, qwen3-vl-moe backbone\(s\) only, not kosmos-2$"):
        VLAPolicy.from_pretrained(tmp_path / "b")


def _model_section(recipe: dict) -> dict:
    return dict(recipe.get("model") or {})


@pytest.mark.parametrize("path", list_recipes(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_training_memory_estimator_and_params_build_the_same_policy(path):
    recipe = load_recipe(path, environ={})
    config = VLAModule(**_model_section(recipe)).vla_config
    estimate = estimate_memory(recipe)
    assert estimate.config == config.to_dict()
    counts = count_parameters(config)
    assert counts["trainable_params"] == estimate.trainable_params
    assert counts["total_params"] <= estimate.total_params  # + an untied LM head counted once per name

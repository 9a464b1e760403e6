"""Per-GPU memory estimates of the recipes under FSDP2 (`vlm4vla.training.memory`)."""

from __future__ import annotations

import copy
import math

import pytest

from vlm4vla.backbones.factory import create_backbone
from vlm4vla.training.memory import GIB, estimate_memory, image_tokens, layer_activation_bytes
from vlm4vla.training.recipes import RECIPES_DIR, RecipeError, list_recipes, load_recipe

# Qwen3-VL-2B at N=10: backbone (paper Table 9) + FCDecoder + ActionQuery.
QWEN3_VL_2B_TOTAL = 2_127_532_032 + 6_577_222 + 2048
assert QWEN3_VL_2B_TOTAL == 2_134_111_302
# One Qwen3-VL-2B decoder layer: q/o 2048×2048, k/v 2048×1024 (8 KV heads × 128), q/k norms
# (128 each), SwiGLU MLP 3×2048×6144, two RMSNorms.
QWEN3_VL_2B_LAYER = 2 * 2048 * 2048 + 2 * 2048 * 1024 + 2 * 128 + 3 * 2048 * 6144 + 2 * 2048


def _recipe(name: str) -> dict:
    return load_recipe(RECIPES_DIR / f"{name}.yaml")


def test_qwen3_vl_2b_states_match_a_hand_computation():
    est = estimate_memory(RECIPES_DIR / "calvin/qwen3-vl-2b.yaml")
    assert est.recipe == "calvin/qwen3-vl-2b" and est.backbone == "qwen3-vl-2b"
    assert (est.world_size, est.micro_batch, est.sharded) == (8, 16, True)
    assert (est.master_dtype, est.compute_dtype) == ("float32", "bfloat16")
    assert est.total_params == est.trainable_params == QWEN3_VL_2B_TOTAL
    # fp32 master params, fp32 grads, two fp32 AdamW moments, each sharded 8 ways.
    assert est.params_gb == pytest.approx(QWEN3_VL_2B_TOTAL * 4 / 8 / GIB)
    assert est.grads_gb == pytest.approx(QWEN3_VL_2B_TOTAL * 4 / 8 / GIB)
    assert est.optimizer_gb == pytest.approx(2 * QWEN3_VL_2B_TOTAL * 4 / 8 / GIB)
    assert est.params_gb == pytest.approx(0.9938, abs=1e-4)
    # The largest FSDP unit is a decoder layer; two bf16 copies are in flight.
    assert est.largest_unit_params == QWEN3_VL_2B_LAYER == 50_336_000
    assert est.unsharded_layer_gb == pytest.approx(2 * QWEN3_VL_2B_LAYER * 2 / GIB)
    # Root unit: tied embeddings 151936×2048 plus everything else outside layers and blocks.
    assert est.root_params > 151_936 * 2048
    assert est.root_params + 28 * QWEN3_VL_2B_LAYER < est.total_params


def test_qwen3_vl_2b_activations_follow_korthikanti():
    est = estimate_memory(RECIPES_DIR / "calvin/qwen3-vl-2b.yaml")
    # A 224² image (50,176 pixels) is below the released minimum of 256·28·28 = 200,704 pixels:
    # upscaled ×2 to 448² = 28×28 patches of 16, 14×14 merged tokens, + 40 text tokens.
    assert (est.sequence_length, est.vision_tokens) == (196 + 40, 784)
    llm = 28 * (34 * 236 * 2048 + 5 * 16 * 236**2)
    vit = 24 * (34 * 784 * 1024 + 5 * 16 * 784**2)
    assert 16 * (llm + vit) == 38_721_994_752  # bytes, 36.06 GiB for the micro-batch of 16
    assert est.activations_gb == pytest.approx(16 * (llm + vit) / GIB)
    parts = (est.params_gb, est.grads_gb, est.optimizer_gb, est.unsharded_layer_gb, est.unsharded_root_gb,
             est.activations_gb)
    assert est.total_gb == pytest.approx(sum(parts))
    assert est.fits and est.to_dict()["fits"] is True


def test_lora_and_freezing_shrink_the_optimizer_state():
    full = estimate_memory(_recipe("calvin/qwen2.5-vl-3b"))
    lora = estimate_memory(_recipe("ablations/lora"))
    frozen = estimate_memory(_recipe("ablations/freeze-vision"))
    embeddings = estimate_memory(_recipe("ablations/freeze-word-embeddings"))
    for est in (lora, frozen, embeddings):
        assert est.trainable_params < full.trainable_params
        assert est.optimizer_gb == pytest.approx(2 * est.grads_gb)
        assert est.optimizer_gb < full.optimizer_gb
    # LoRA trains adapters only (< 2% of the model) but keeps every base weight.
    assert lora.optimizer_gb < 0.02 * full.optimizer_gb
    assert lora.total_params > full.total_params and lora.params_gb > full.params_gb
    # A frozen vision tower stores no activations for backward.
    assert frozen.activations_gb < full.activations_gb and lora.activations_gb == frozen.activations_gb
    assert embeddings.activations_gb == full.activations_gb


def test_doubling_the_gpus_halves_the_sharded_parts():
    recipe = _recipe("bridge/qwen3-vl-8b")
    eight, sixteen = estimate_memory(recipe), estimate_memory(recipe, gpus=16)
    assert (eight.world_size, sixteen.world_size) == (8, 16)
    for part in ("params_gb", "grads_gb", "optimizer_gb"):
        assert getattr(sixteen, part) == pytest.approx(getattr(eight, part) / 2)
    for part in ("unsharded_layer_gb", "unsharded_root_gb", "activations_gb"):
        assert getattr(sixteen, part) == getattr(eight, part)
    # The untied LM head is frozen: stored as a parameter, without gradients or moments.
    assert eight.total_params - eight.trainable_params == 4096 * 151_936


def test_world_size_is_devices_times_nodes():
    recipe = copy.deepcopy(_recipe("calvin/kosmos-2"))
    recipe["trainer"]["num_nodes"] = 2
    assert estimate_memory(recipe).world_size == 16
    recipe["trainer"]["devices"] = "auto"
    with pytest.raises(ValueError, match="trainer.devices"):
        estimate_memory(recipe)
    assert estimate_memory(recipe, gpus=4).world_size == 4


def test_activation_checkpointing_reduces_activations():
    recipe = copy.deepcopy(_recipe("calvin/qwen2.5-vl-3b"))
    recipe["model"]["activation_checkpointing"] = False  # the recipe turns it on (84 GiB without)
    plain = estimate_memory(recipe)
    assert not plain.fits
    recipe["model"]["activation_checkpointing"] = True
    ckpt = estimate_memory(recipe)
    assert ckpt.activation_checkpointing and not plain.activation_checkpointing
    assert ckpt.activations_gb < plain.activations_gb / 5
    # Layer inputs of both towers + one (the largest) layer's full activations, per sample.
    s, v = ckpt.sequence_length, ckpt.vision_tokens
    per_sample = 36 * 2 * s * 2048 + 32 * 2 * v * 1280 + max(
        layer_activation_bytes(s, 2048, 16), layer_activation_bytes(v, 1280, 16)
    )
    assert ckpt.activations_gb == pytest.approx(16 * per_sample / GIB)
    # Everything else is unchanged.
    assert (ckpt.params_gb, ckpt.optimizer_gb, ckpt.unsharded_gb) == (plain.params_gb, plain.optimizer_gb,
                                                                      plain.unsharded_gb)


def test_fused_attention_drops_the_score_term():
    recipe = _recipe("ablations/resolution-512")
    recipe["model"]["activation_checkpointing"] = False  # the score term is that of every layer
    eager, fused = estimate_memory(recipe), estimate_memory(recipe, attention_scores=False)
    s, v, b = eager.sequence_length, eager.vision_tokens, eager.micro_batch
    scores = b * (36 * 5 * 16 * s**2 + 32 * 5 * 16 * v**2)
    assert eager.activations_gb - fused.activations_gb == pytest.approx(scores / GIB)


@pytest.mark.parametrize(
    ("backbone", "image_size", "expected"),
    [
        # Released budget 256·28·28 … 1280·28·28 pixels (200,704 … 1,003,520).
        ("qwen2.5-vl-3b", 224, (256, 1024)),    # 224² < 200,704: ×2 → 448 = 16·28, 32² patches of 14
        ("qwen2.5-vl-3b", 512, (324, 1296)),    # round(512/28)·28 = 504, 504² = 254,016 in budget
        ("qwen2.5-vl-3b", 768, (729, 2916)),    # round(768/28)·28 = 756, 756² = 571,536 in budget
        ("qwen3-vl-2b", 224, (196, 784)),       # ×2 → 448 = 14·32, 28² patches of 16
        ("qwen3-vl-2b", 512, (256, 1024)),      # 512 = 16·32, 512² = 262,144 in budget
        ("paligemma-3b", 224, (256, 256)),
        ("paligemma2-3b", 512, (256, 256)),     # the processor resizes to 224 anyway
        ("kosmos-2", 224, (64, 257)),           # 64 latent slots; CLIP patches + CLS
    ],
)
def test_image_tokens_follow_the_processors(backbone, image_size, expected):
    assert image_tokens(create_backbone(backbone, weights="meta"), image_size) == expected


def test_image_tokens_read_a_present_processor():
    # The tiny Qwen3-VL processor has the released budget, as the full-size one: 196 tokens.
    backbone = create_backbone("tiny:qwen3-vl")
    assert image_tokens(backbone, 224) == (196, 784)
    # With transformers' default 56² minimum instead, 224 = 7·32 stays: 7×7 tokens, 14×14 patches.
    backbone.processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    assert image_tokens(backbone, 224) == (49, 196)


def test_every_recipe_gets_an_estimate():
    paths = list_recipes()
    assert len(paths) > 30
    for path in paths:
        est = estimate_memory(path)
        parts = (est.params_gb, est.grads_gb, est.optimizer_gb, est.unsharded_gb, est.activations_gb)
        assert all(math.isfinite(p) and p >= 0 for p in parts), est.recipe
        assert est.params_gb > 0 and est.activations_gb > 0, est.recipe
        assert est.total_gb == pytest.approx(sum(parts)), est.recipe
        if est.sharded:
            assert (est.world_size, est.compute_dtype) == (8, "bfloat16"), est.recipe
            assert est.unsharded_layer_gb > 0, est.recipe
        else:  # the CPU quickstart: one device, nothing gathered, fp32 compute
            assert (est.unsharded_gb, est.compute_dtype) == (0.0, "float32"), est.recipe


def test_unknown_recipe_and_bad_settings_are_rejected(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        estimate_memory(tmp_path / "missing.yaml")
    recipe = copy.deepcopy(_recipe("calvin/kosmos-2"))
    recipe["trainer"]["precision"] = "transformer-engine"
    with pytest.raises(ValueError, match="trainer.precision"):
        estimate_memory(recipe)
    with pytest.raises(ValueError, match="gpus"):
        estimate_memory(_recipe("calvin/kosmos-2"), gpus=0)

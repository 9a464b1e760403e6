"""ActionQuery, FCDecoder, the loss, VLAPolicy and its training-mode switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.backbones.conftest import TINY_VARIANTS, variant_id
from vlm4vla.backbones import get_backbone
from vlm4vla.policy import ActionQuery, FCDecoder, LoraSettings, VLAPolicy, action_loss
from vlm4vla.policy.action_space import GripperConvention, RangeNormalizer


# ---------------------------------------------------------------------------- head
@pytest.mark.parametrize(
    ("hidden", "expected"),
    [(2048, 6_577_222), (3584, 11_689_798), (2560, 8_019_270), (4096, 13_918_278), (2304, 7_265_478)],
)
def test_fc_decoder_matches_paper_table9(hidden, expected):
    with torch.device("meta"):
        head = FCDecoder(hidden, chunk_size=10)
    assert sum(p.numel() for p in head.parameters()) == expected


def test_fc_decoder_shapes_and_init():
    head = FCDecoder(64, chunk_size=4)
    arm, grip = head(torch.randn(3, 64))
    assert arm.shape == (3, 4, 6) and grip.shape == (3, 4)
    assert arm.abs().max() <= 1.0
    for module in head.modules():
        if isinstance(module, torch.nn.Linear):
            assert torch.count_nonzero(module.bias) == 0
            bound = (6 / (module.in_features + module.out_features)) ** 0.5
            assert module.weight.abs().max() <= bound


def test_fc_decoder_rejects_bad_sizes():
    with pytest.raises(ValueError, match="chunk_size"):
        FCDecoder(64, chunk_size=0)
    with pytest.raises(ValueError, match="hidden_size"):
        FCDecoder(63, chunk_size=4)


# ---------------------------------------------------------------------------- ActionQuery
def test_action_query_starts_at_zero_and_learns():
    """As released (``nn.Parameter(torch.zeros(H))``): zeros, one H-vector, trainable."""
    query = ActionQuery(48)
    assert torch.equal(query(), torch.zeros(48)) and query.embedding.requires_grad
    query.embedding.data.fill_(1.0)
    query.reset_parameters()
    assert not query.embedding.any()
    policy = VLAPolicy(get_backbone("qwen2.5-vl").tiny(), chunk_size=2)
    assert policy.action_query.embedding.shape == (policy.backbone.hidden_size,)
    assert not policy.action_query.embedding.any()


# ---------------------------------------------------------------------------- loss
def test_loss_matches_hand_computation_and_masks_padded_steps():
    arm = torch.tensor([[[0.5] * 6, [0.0] * 6]])
    logits = torch.tensor([[2.0, -1.0]])
    target = torch.tensor([[[0.0] * 6 + [1.0], [3.0] * 6 + [1.0]]])
    mask = torch.tensor([[True, False]])
    out = action_loss(arm, logits, target, mask, gripper_weight=0.5)
    huber = 0.5 * 0.5**2  # |d| < delta: 0.5 d²
    bce = float(F.binary_cross_entropy_with_logits(torch.tensor(2.0), torch.tensor(1.0)))
    assert out["loss_arm"].item() == pytest.approx(huber)
    assert out["loss_gripper"].item() == pytest.approx(bce)
    assert out["loss"].item() == pytest.approx(huber + 0.5 * bce)
    assert out["gripper_accuracy"].item() == 1.0
    # The padded step's huge error changes nothing.
    target[0, 1, :6] = 100.0
    assert action_loss(arm, logits, target, mask, gripper_weight=0.5)["loss"].item() == pytest.approx(
        out["loss"].item()
    )


def test_loss_default_gripper_weight_and_shape_checks():
    arm, logits = torch.zeros(2, 3, 6), torch.zeros(2, 3)
    target = torch.zeros(2, 3, 7)
    out = action_loss(arm, logits, target)
    assert out["loss"].item() == pytest.approx(0.01 * np.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="target"):
        action_loss(arm, logits, torch.zeros(2, 3, 6))
    with pytest.raises(ValueError, match="mask"):
        action_loss(arm, logits, target, torch.ones(2, 4, dtype=torch.bool))


def test_huber_beyond_delta_is_linear():
    out = action_loss(torch.zeros(1, 1, 6), torch.zeros(1, 1), torch.tensor([[[3.0] * 6 + [0.0]]]))
    assert out["loss_arm"].item() == pytest.approx(3.0 - 0.5)


# ---------------------------------------------------------------------------- policy
def _images(n):
    return np.random.default_rng(0).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def test_predict_chunk_shapes_binarised_gripper_determinism_and_mode():
    policy = VLAPolicy(get_backbone("kosmos-2").tiny(), chunk_size=5).train()
    chunk = policy.predict_chunk(_images(3), ["a", "b", "c d e"])
    assert chunk.shape == (3, 5, 7) and chunk.dtype == torch.float32
    assert set(chunk[..., 6].unique().tolist()) <= {0.0, 1.0}
    assert chunk[..., :6].abs().max() <= 1.0
    torch.testing.assert_close(policy.predict_chunk(_images(3), ["a", "b", "c d e"]), chunk)
    assert policy.training, "predict_chunk restores the previous mode"
    # [-10, 10] → [-1, 1]: de-normalising is arm × 10; the "unit" gripper stays 0/1.
    policy.normalizer = RangeNormalizer(-10, 10, gripper=GripperConvention("unit"))
    scaled = policy.predict_chunk(_images(3), ["a", "b", "c d e"])
    torch.testing.assert_close(scaled[..., :6], chunk[..., :6] * 10)
    torch.testing.assert_close(scaled[..., 6], chunk[..., 6])


def test_policy_rejects_batches_with_another_chunk_size():
    policy = VLAPolicy(get_backbone("qwen2.5-vl").tiny(), chunk_size=4)
    inputs = policy.backbone.prepare_inputs(_images(1), ["a"])
    with pytest.raises(ValueError, match="chunk"):
        policy({"inputs": inputs, "actions": torch.zeros(1, 10, 7)})
    with pytest.raises(ValueError, match="missing"):
        policy({"inputs": inputs})


def test_head_and_query_are_under_one_percent_of_real_models():
    from vlm4vla.backbones.presets import get_preset

    counts = VLAPolicy(get_preset("qwen3-vl-2b").build("meta"), chunk_size=10).parameter_counts()
    assert counts["head_params"] == 6_577_222 and counts["action_query_params"] == 2048
    assert (counts["head_params"] + counts["action_query_params"]) / counts["backbone_params"] < 0.01


# ---------------------------------------------------------------------------- switches
def _trainable(policy) -> set[str]:
    return {n for n, p in policy.named_parameters() if p.requires_grad}


def _names_under(policy, module) -> set[str]:
    ids = {id(p) for p in module.parameters()}
    return {n for n, p in policy.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS])
def test_freeze_switches_change_exactly_their_parameters(variant):
    name, overrides = variant
    cls = get_backbone(name)

    full = VLAPolicy(cls.tiny(**overrides), chunk_size=4)
    everything = _trainable(full)
    assert everything == {n for n, _ in full.named_parameters()}, "all VLM weights train by default"

    policy = VLAPolicy(cls.tiny(**overrides), chunk_size=4)
    vision = _names_under(policy, policy.backbone.vision_encoder)
    count = policy.freeze_vision_encoder()
    assert _trainable(policy) == everything - vision and vision
    assert count == sum(p.numel() for p in policy.parameters() if p.requires_grad)

    policy = VLAPolicy(cls.tiny(**overrides), chunk_size=4)
    embeddings = _names_under(policy, policy.backbone.word_embeddings)
    policy.freeze_word_embeddings()
    assert _trainable(policy) == everything - embeddings and len(embeddings) == 1

    policy = VLAPolicy(cls.tiny(**overrides), chunk_size=4)
    llm = _names_under(policy, policy.backbone.language_model) | embeddings
    policy.freeze_llm()
    assert _trainable(policy) == everything - llm
    assert not (vision & llm), "freezing the LLM leaves the vision encoder trainable"
    assert {"action_query.embedding"} | {n for n in everything if n.startswith("head.")} <= _trainable(policy)


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS])
def test_lora_trains_only_language_model_adapters_query_and_head(variant):
    name, overrides = variant
    policy = VLAPolicy(get_backbone(name).tiny(**overrides), chunk_size=4)
    head_and_query = {n for n, _ in policy.named_parameters() if n.startswith(("head.", "action_query."))}
    count = policy.apply_lora(LoraSettings(rank=4, alpha=8))
    trainable = _trainable(policy)
    adapters = trainable - head_and_query
    assert head_and_query <= trainable
    assert adapters and all(".lora_" in n for n in adapters)
    language_model = policy.backbone.language_model_path
    assert all(f"backbone.model.{language_model}." in n for n in adapters), "LoRA stays on the LM"
    assert count == sum(p.numel() for p in policy.parameters() if p.requires_grad)
    counts = policy.parameter_counts()
    assert counts["lora_params"] == sum(p.numel() for n, p in policy.named_parameters() if ".lora_" in n)

    # LoRA-B starts at zero: the adapted model computes what the original did.
    policy.eval()
    reference = VLAPolicy(get_backbone(name).tiny(**overrides), chunk_size=4).eval()
    reference.load_state_dict({k: v for k, v in policy.state_dict().items() if "lora_" not in k}, strict=False)
    images = _images(1)
    inputs = policy.backbone.prepare_inputs(images, ["a b"])
    with torch.no_grad():
        torch.testing.assert_close(policy.predict(inputs)[0], reference.predict(inputs)[0], atol=1e-5, rtol=1e-5)

    policy.train()
    batch = {"inputs": inputs, "actions": torch.rand(1, 4, 7).round(), "action_mask": torch.ones(1, 4, dtype=bool)}
    policy(batch)["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)


def test_lora_on_moe_reaches_the_experts():
    policy = VLAPolicy(get_backbone("qwen3-vl-moe").tiny(), chunk_size=4)
    policy.apply_lora(LoraSettings(rank=2))
    assert any(".experts." in n and ".lora_" in n for n in _trainable(policy))
    policy_without = VLAPolicy(get_backbone("qwen3-vl-moe").tiny(), chunk_size=4)
    policy_without.apply_lora(LoraSettings(rank=2, include_experts=False))
    assert not any(".experts." in n for n in _trainable(policy_without))
    with pytest.raises(ValueError, match="dropout"):
        VLAPolicy(get_backbone("qwen3-vl-moe").tiny(), chunk_size=4).apply_lora(LoraSettings(dropout=0.1))


def test_untied_lm_head_is_frozen():
    """An untied LM head never reaches the ActionQuery: frozen so DDP needs no unused-parameter search."""
    cls = get_backbone("qwen2.5-vl")
    backbone = cls.tiny(tie_word_embeddings=False)
    VLAPolicy(backbone, chunk_size=4)  # freezes the unused head on construction
    head = backbone.output_embeddings.weight
    assert head is not backbone.word_embeddings.weight
    assert not head.requires_grad and backbone.word_embeddings.weight.requires_grad


def test_predict_chunk_maps_the_gripper_to_the_dataset_convention():
    from vlm4vla.policy.action_space import GripperConvention, QuantileNormalizer

    raw = np.random.default_rng(0).uniform(-0.5, 0.5, (200, 7)).astype(np.float32)
    raw[:, 6] = np.sign(raw[:, 6])
    policy = VLAPolicy(get_backbone("paligemma").tiny(), chunk_size=3)
    plain = policy.predict_chunk(_images(2), ["a", "b"])
    policy.normalizer = QuantileNormalizer.from_actions(raw, gripper=GripperConvention("signed"))
    signed = policy.predict_chunk(_images(2), ["a", "b"])
    torch.testing.assert_close(signed[..., 6], plain[..., 6] * 2 - 1)
    assert signed[..., :6].abs().max() <= 0.5 + 1e-6, "arm de-normalised into the data's range"
    policy.normalizer = QuantileNormalizer.from_actions(np.abs(raw), gripper=GripperConvention("unit"))
    torch.testing.assert_close(policy.predict_chunk(_images(2), ["a", "b"])[..., 6], plain[..., 6])


def test_an_untied_lm_head_is_dropped_and_checkpoints_holding_it_still_load():
    """Training and bundle loading leave out the untied, never-run LM head (issue 18); a state
    dict written with it loads strictly, and one without it loads into a policy without it."""
    from vlm4vla.backbones import get_backbone
    from vlm4vla.training.module import VLAModule

    with_head = VLAPolicy(get_backbone("qwen2.5-vl").tiny(tie_word_embeddings=False), chunk_size=4)
    state = with_head.state_dict()
    assert "backbone.model.lm_head.weight" in state
    policy = VLAPolicy(get_backbone("qwen2.5-vl").tiny(tie_word_embeddings=False), chunk_size=4)
    assert policy.drop_unused_lm_head() == ["backbone.model.lm_head.weight"]
    assert policy.backbone.model.lm_head is None and "backbone.model.lm_head.weight" not in policy.state_dict()
    policy.load_state_dict(state, strict=True)  # the old key is skipped, everything else matches
    for name, value in policy.state_dict().items():
        assert torch.equal(value, state[name]), name
    tied = VLAPolicy(get_backbone("qwen2.5-vl").tiny(), chunk_size=4)
    assert tied.drop_unused_lm_head() == [] and tied.backbone.model.lm_head is not None  # it is the embedding
    module = VLAModule("tiny:qwen2.5-vl", chunk_size=4)
    assert module.build_policy().backbone.output_embeddings is not None  # tied: kept

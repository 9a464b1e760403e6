"""Every registered backbone, built tiny with its real processor classes (timm-style parametrisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.backbones.conftest import TINY_VARIANTS, variant_id
from vlm4vla.backbones import VLABackbone, get_backbone, list_backbones
from vlm4vla.policy import VLAPolicy
from vlm4vla.registry import UnknownNameError

INSTRUCTIONS = ["pick up the black bowl", "open the top drawer and put the bowl inside"]


def _images(n: int, size: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _batch(policy: VLAPolicy, n: int = 2) -> dict:
    inputs = policy.backbone.prepare_inputs(_images(n), INSTRUCTIONS[:n])
    actions = torch.rand(n, policy.chunk_size, 7) * 2 - 1
    actions[..., 6] = (actions[..., 6] > 0).float()
    mask = torch.ones(n, policy.chunk_size, dtype=torch.bool)
    mask[0, -1] = False
    return {"inputs": inputs, "actions": actions, "action_mask": mask}


def test_registry_lists_the_paper_families():
    assert {"qwen2.5-vl", "qwen3-vl", "qwen3-vl-moe", "paligemma", "kosmos-2"} <= set(list_backbones())
    for name in list_backbones():
        cls = get_backbone(name)
        assert issubclass(cls, VLABackbone) and cls.name == name


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        get_backbone("qwen9-vl")
    message = str(err.value)
    assert "qwen9-vl" in message
    for name in list_backbones():
        assert name in message


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS])
def test_forward_backward_reaches_vision_query_and_head(variant):
    name, overrides = variant
    policy = VLAPolicy(get_backbone(name).tiny(**overrides), chunk_size=4)
    out = policy(_batch(policy))
    assert set(out) >= {"loss", "loss_arm", "loss_gripper", "gripper_accuracy"}
    assert torch.isfinite(out["loss"])
    out["loss"].backward()

    def grad_norm(module_params) -> float:
        return sum(float(p.grad.abs().sum()) for p in module_params if p.grad is not None)

    assert grad_norm(policy.backbone.vision_encoder.parameters()) > 0
    assert grad_norm([policy.action_query.embedding]) > 0
    assert grad_norm(policy.head.parameters()) > 0
    assert grad_norm(policy.backbone.word_embeddings.parameters()) > 0


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS])
def test_padded_batch_equals_single_samples(variant):
    name, overrides = variant
    policy = VLAPolicy(get_backbone(name).tiny(**overrides), chunk_size=4).eval()
    images = _images(2)
    with torch.no_grad():
        batched = policy.predict(policy.backbone.prepare_inputs(images, INSTRUCTIONS))
        lengths = policy.backbone.prepare_inputs(images, INSTRUCTIONS)["attention_mask"].sum(1)
        assert lengths[0] != lengths[1], "the test needs instructions of different token lengths"
        for i in range(2):
            single = policy.predict(policy.backbone.prepare_inputs(images[i : i + 1], INSTRUCTIONS[i : i + 1]))
            torch.testing.assert_close(batched[0][i], single[0][0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(batched[1][i], single[1][0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=[variant_id(v) for v in TINY_VARIANTS])
def test_action_query_changes_only_through_its_slot(variant):
    """The hidden state at the slot depends on the ActionQuery vector; the inputs stay unchanged."""
    name, overrides = variant
    backbone = get_backbone(name).tiny(**overrides).eval()
    inputs = backbone.prepare_inputs(_images(1), INSTRUCTIONS[:1])
    ids_before = inputs["input_ids"].clone()
    query = torch.randn(backbone.hidden_size)
    with torch.no_grad():
        a = backbone(inputs, query)
        b = backbone(inputs, query)
        c = backbone(inputs, query * 3)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(inputs["input_ids"], ids_before)
    assert a.shape == (1, backbone.hidden_size)


# ---------------------------------------------------------------------------- prompt layouts
QWEN_LONG = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|>{img}<|vision_end|>What action should the robotic arm take to pick up cube<|im_end|>\n"
    "<|im_start|>assistant\n{aq}"
)
QWEN_SHORT = "<|im_start|><|vision_start|>{img}<|vision_end|>pick up cube\n{aq}"


# The released pixel budget (min 256·28·28 pixels) upscales a 224² image to 448²:
# Qwen2.5-VL (28-pixel merged patches) 16² = 256 tokens, Qwen3-VL (32-pixel) 14² = 196.
@pytest.mark.parametrize(
    ("name", "scheme", "layout", "image_tokens"),
    [
        ("qwen2.5-vl", "long", QWEN_LONG, 256),
        ("qwen2.5-vl", "short", QWEN_SHORT, 256),
        ("qwen3-vl", "long", QWEN_LONG, 196),
        ("qwen3-vl", "short", QWEN_SHORT, 196),
        ("qwen3-vl-moe", "long", QWEN_LONG, 196),
    ],
)
def test_qwen_prompt_tokens(name, scheme, layout, image_tokens):
    backbone = get_backbone(name).tiny(prompt_scheme=scheme)
    inputs = backbone.prepare_inputs(_images(1, size=128), ["pick up cube"])
    tokenizer = backbone.processor.tokenizer
    expected = layout.format(img="<|image_pad|>" * image_tokens, aq=backbone.action_query_token)
    assert tokenizer.decode(inputs["input_ids"][0]) == expected
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    is_image = inputs["input_ids"][0] == image_id
    assert torch.equal(inputs["mm_token_type_ids"][0].bool(), is_image)
    assert int(inputs["action_query_index"][0]) == inputs["input_ids"].shape[1] - 1

    # M-RoPE: the image block spans the merged patch grid in (h, w); text after it continues
    # from max position + 1, and the ActionQuery is the last position.
    grid = inputs["image_grid_thw"][0]
    side = int(grid[1]) // 2
    positions, _ = backbone.model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    image_pos = positions[:, 0, is_image]
    assert int(image_pos[1].max() - image_pos[1].min()) == side - 1
    assert int(image_pos[2].max() - image_pos[2].min()) == side - 1
    text_after = positions[:, 0, int(is_image.nonzero().max()) + 1 :]
    assert torch.equal(text_after[0], text_after[1]) and torch.equal(text_after[1], text_after[2])
    assert int(text_after[0, 0]) == int(image_pos.max()) + 1


def test_unknown_prompt_scheme_is_rejected():
    with pytest.raises(ValueError, match="prompt_scheme"):
        get_backbone("qwen2.5-vl").tiny(prompt_scheme="medium")


@pytest.mark.parametrize("text_model_type", ["gemma", "gemma2"])
def test_paligemma_prompt_tokens_and_prefix_mask(text_model_type):
    backbone = get_backbone("paligemma").tiny(text_model_type=text_model_type)
    inputs = backbone.prepare_inputs(_images(1), ["pick up cube"])
    tokenizer = backbone.processor.tokenizer
    expected = "<image>" * 256 + "<bos>pick up cube\n" + backbone.action_query_token
    assert tokenizer.decode(inputs["input_ids"][0]) == expected
    token_types = inputs["token_type_ids"][0]
    # Image tokens are the bidirectional prefix (0); instruction and ActionQuery are causal (1).
    assert torch.equal(token_types[:256], torch.zeros(256, dtype=token_types.dtype))
    assert bool((token_types[256:] == 1).all())


def test_kosmos2_prompt_tokens_and_image_slots():
    backbone = get_backbone("kosmos-2").tiny()
    inputs = backbone.prepare_inputs(_images(1), ["pick up cube"])
    tokenizer = backbone.processor.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    slots = inputs["image_embeds_position_mask"][0]
    assert tokens[:2] == ["<s>", "<image>"]
    assert slots[2:66].sum() == 64 and slots.sum() == 64
    assert tokens[66] == "</image>"
    # </phrase> is added with lstrip=True by Kosmos2Processor, so the "\n" of the layout is
    # absorbed into it, exactly as with the released tokenizer.
    assert tokenizer.decode(inputs["input_ids"][0, 67:]) == "<phrase>pick up cube</phrase></s>"
    assert "<grounding>" not in tokens


# ---------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def qwen_tiny():
    return get_backbone("qwen2.5-vl").tiny()


@pytest.mark.parametrize(
    ("images", "instructions", "match"),
    [
        (np.zeros((200, 200, 3), np.uint8), ["a"], "shape"),
        (np.zeros((1, 200, 200, 3), np.float32), ["a"], "uint8"),
        (torch.zeros(1, 200, 200, 4, dtype=torch.uint8), ["a"], r"\(H, W, 3\)"),
        ([], ["a"], "empty"),
        (np.zeros((2, 64, 64, 3), np.uint8), [], "empty"),
        (np.zeros((2, 64, 64, 3), np.uint8), ["a"], "one per image"),
        (np.zeros((1, 64, 64, 3), np.uint8), "a", "list of strings"),
        (np.zeros((1, 64, 64, 3), np.uint8), [3], "str"),
        ("image.png", ["a"], "expected"),
    ],
)
def test_bad_inputs_raise_value_error(qwen_tiny, images, instructions, match):
    with pytest.raises(ValueError, match=match):
        qwen_tiny.prepare_inputs(images, instructions)


def test_accepts_pil_chw_and_tensor_images(qwen_tiny):
    from PIL import Image

    hwc = _images(1, size=96)[0]
    as_pil = qwen_tiny.prepare_inputs([Image.fromarray(hwc)], ["a"])
    as_chw = qwen_tiny.prepare_inputs(torch.from_numpy(hwc).permute(2, 0, 1)[None], ["a"])
    as_hwc = qwen_tiny.prepare_inputs(hwc[None], ["a"])
    torch.testing.assert_close(as_pil["pixel_values"], as_hwc["pixel_values"])
    torch.testing.assert_close(as_chw["pixel_values"], as_hwc["pixel_values"])


def test_forward_without_slot_index_is_rejected(qwen_tiny):
    inputs = dict(qwen_tiny.prepare_inputs(_images(1), ["a"]))
    inputs.pop("action_query_index")
    with pytest.raises(ValueError, match="action_query_index"):
        qwen_tiny(inputs, torch.zeros(qwen_tiny.hidden_size))


def test_images_are_resized_to_224_first(qwen_tiny):
    """Any input size is resized to 224² before the model's own processor, which upscales it to
    448² (the released minimum of 256·28·28 pixels): a 32×32 grid of 14-pixel patches for Qwen2.5."""
    for size in (128, 200, 480):
        inputs = qwen_tiny.prepare_inputs(_images(1, size=size), ["a"])
        assert inputs["image_grid_thw"][0].tolist() == [1, 32, 32]


@pytest.mark.parametrize("name", list_backbones())
def test_instructions_are_stripped(name):
    """As in the released code: "  pick up  \n" is tokenised exactly as "pick up"."""
    backbone = get_backbone(name).tiny()
    images = _images(2, size=64)
    padded = backbone.prepare_inputs(images, ["  pick up  \n", "\topen the drawer "])
    clean = backbone.prepare_inputs(images, ["pick up", "open the drawer"])
    assert torch.equal(padded["input_ids"], clean["input_ids"])
    assert torch.equal(padded["attention_mask"], clean["attention_mask"])

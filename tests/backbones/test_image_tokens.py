"""`VLABackbone.image_token_counts` against what the backbone's own processor produces."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlm4vla.backbones import get_backbone, list_backbones
from vlm4vla.backbones.presets import get_preset


def _processor_counts(backbone, inputs) -> tuple[int, int]:
    """(LLM image tokens, vision-tower tokens) read off the processed inputs (the oracle)."""
    config = backbone.model.config
    if "image_embeds_position_mask" in inputs:  # Kosmos-2: image slots; CLIP patches + CLS
        vision = config.vision_config
        side = inputs["pixel_values"].shape[-1]
        return int(inputs["image_embeds_position_mask"].sum()), (side // vision.patch_size) ** 2 + 1
    token = getattr(config, "image_token_id", None)
    if token is None:
        token = config.image_token_index
    llm = int((inputs["input_ids"] == token).sum())
    if "image_grid_thw" in inputs:  # Qwen: one row of pixel_values per patch
        return llm, int(inputs["pixel_values"].shape[0])
    side = inputs["pixel_values"].shape[-1]
    return llm, (side // config.vision_config.patch_size) ** 2


@pytest.mark.parametrize("image_size", [224, 448])
@pytest.mark.parametrize("family", list_backbones())
def test_image_token_counts_match_the_processor(family, image_size):
    backbone = get_backbone(family).tiny(image_size=image_size)
    inputs = backbone.prepare_inputs(np.zeros((1, 200, 160, 3), np.uint8), ["pick up the cube"])
    assert backbone.image_token_counts() == _processor_counts(backbone, inputs)
    assert backbone.image_token_counts(image_size) == backbone.image_token_counts()


# ---------------------------------------------------------------------------- Qwen pixel budget
# The checkpoints' own image-processor settings (preprocessor_config.json on the hub):
# Qwen2.5-VL patch 14 within 56²…28²·1280 pixels, Qwen3-VL patch 16 within 256²…4096² pixels.
HUB_IMAGE_PROCESSORS = {
    "qwen2.5-vl-3b": {"patch_size": 14, "size": {"shortest_edge": 3136, "longest_edge": 12_845_056}},
    "qwen3-vl-2b": {"patch_size": 16, "size": {"shortest_edge": 65_536, "longest_edge": 16_777_216},
                    "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
}
# The released code's budget, min 256·28·28 = 200,704 pixels: 224² = 50,176 is below it, so
# smart_resize scales the side by √(200704 / 50176) = 2 and rounds up to the factor:
# Qwen2.5-VL (factor 14·2 = 28) 448 → 32×32 patches, /2² = 256 tokens;
# Qwen3-VL (factor 16·2 = 32) 448 → 28×28 patches, /2² = 196 tokens.
RELEASED_AT_224 = {"qwen2.5-vl-3b": ([1, 32, 32], 1024, 256), "qwen3-vl-2b": ([1, 28, 28], 784, 196)}


def _hub_like_checkpoint(tmp_path, preset_name: str):
    """A directory with a tiny tokenizer and the real image-processor class, configured as the
    full-size checkpoint's preprocessor_config.json."""
    from transformers import Qwen2VLImageProcessorPil

    from vlm4vla.backbones.tiny import build_tiny_tokenizer

    cls = get_preset(preset_name).backbone_class
    build_tiny_tokenizer(cls.tiny_special_tokens, cls.tiny_extra_tokens).save_pretrained(tmp_path)
    Qwen2VLImageProcessorPil(merge_size=2, temporal_patch_size=2, **HUB_IMAGE_PROCESSORS[preset_name]).save_pretrained(
        tmp_path
    )
    return cls


@pytest.mark.parametrize("preset_name", sorted(RELEASED_AT_224))
def test_qwen_processors_get_the_released_pixel_budget(tmp_path, preset_name):
    """The stock processor classes, loaded as a preset loads them, give 256 (Qwen2.5-VL) / 196
    (Qwen3-VL) image tokens for a 224² image; the meta-device build counts the same."""
    cls = _hub_like_checkpoint(tmp_path, preset_name)
    preset = get_preset(preset_name)
    processor = cls.load_processor(tmp_path, local_files_only=True, image_processor_kwargs=preset.processor)
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert preset.processor == {"size": {"shortest_edge": 256 * 28 * 28, "longest_edge": 1280 * 28 * 28}}
    grid, patches, tokens = RELEASED_AT_224[preset_name]
    inputs = cls.format_prompt("pick up the cube", "long")
    batch = processor(text=[inputs], images=[Image.new("RGB", (224, 224))], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [grid]
    assert batch["pixel_values"].shape[0] == patches
    assert int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == tokens
    assert preset.build("meta").image_token_counts(224) == (tokens, patches)
    # The tiny backbone's processor has the same budget, so the tests see the same counts.
    tiny = cls.tiny()
    assert tiny.image_token_counts(224) == (tokens, patches)
    # from_pretrained (real weights from a directory) applies the same settings.
    tiny.model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.pixel_budget() == (256 * 28 * 28, 1280 * 28 * 28)
    assert loaded.prepare_inputs(np.zeros((1, 224, 224, 3), np.uint8), ["a"])["image_grid_thw"].tolist() == [grid]


def test_a_stored_processor_keeps_its_own_budget(tmp_path):
    """Loading a processor as a bundle does (no overrides) keeps the settings it was saved with,
    so a bundle trained with another budget still tokenises as it was trained."""
    cls = _hub_like_checkpoint(tmp_path, "qwen2.5-vl-3b")
    processor = cls.load_processor(tmp_path, local_files_only=True)
    backbone = cls.tiny()
    backbone.processor = processor
    # Stock budget, min 56²: 224 = 8·28 stays 224 → 16×16 patches, 64 tokens.
    assert backbone.image_token_counts(224) == (64, 256)
    inputs = backbone.prepare_inputs(np.zeros((1, 224, 224, 3), np.uint8), ["a"])
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]

"""PaliGemma 1 and 2 backbones (one class; the config's text model selects Gemma or Gemma 2).

Prompt (paper-notes §2): ``<image>×256 <bos> instruction \\n <ActionQuery>``. The image
tokens form the bidirectional prefix; the instruction and the ActionQuery are the causal
suffix, so ``token_type_ids`` is 0 on image tokens and 1 elsewhere (the stock processor would
also put the text in the prefix).

Switch ``paligemma_attention="causal"``: no ``token_type_ids``, so the stock model attends fully
causally, image tokens included, as the released code does (it runs the model on
``inputs_embeds`` without ``token_type_ids``: vlm4vla/model/backbone/base_backbone.py,
``forward_continuous``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image
from transformers import (
    BatchFeature,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessorPil,
)

from vlm4vla.backbones.base import VLABackbone, register_backbone


@register_backbone("paligemma")
class PaliGemmaBackbone(VLABackbone):
    """PaliGemma-1 (Gemma 2B) and PaliGemma-2 (Gemma 2 2B) with a SigLIP-So400m/14 encoder at 224²."""

    hf_model_class = PaliGemmaForConditionalGeneration
    hf_config_class = PaliGemmaConfig
    image_processor_class = SiglipImageProcessorPil
    prompt_schemes = ("default",)
    action_query_token = "<eos>"
    vision_encoder_path = "model.vision_tower"
    language_model_path = "model.language_model"
    decoder_layer_class_names = ("GemmaDecoderLayer", "Gemma2DecoderLayer")
    vision_block_class_names = ("SiglipEncoderLayer",)
    lora_target_modules = (
        r".*language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    )
    action_query_fill = {"attention_mask": 1, "token_type_ids": 1}
    switch_names = ("paligemma_attention",)
    tiny_special_tokens = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    tiny_variants = {"paligemma-1": {}, "paligemma-2": {"text_model_type": "gemma2"}}

    @classmethod
    def format_prompt(cls, instruction: str, scheme: str) -> str:
        # The processor inserts <bos> after the image tokens and "\n" after the text.
        return f"<image>{instruction}"

    @classmethod
    def build_processor(cls, tokenizer: Any, image_processor: Any) -> Any:
        return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)

    @classmethod
    def build_inputs(
        cls,
        processor: Any,
        images: list[Image.Image],
        instructions: list[str],
        *,
        prompt_scheme: str,
        switches: Mapping[str, Any],
    ) -> BatchFeature:
        batch = super().build_inputs(processor, images, instructions, prompt_scheme=prompt_scheme, switches=switches)
        if switches.get("paligemma_attention") == "causal":
            batch.pop("token_type_ids")
        return batch

    @classmethod
    def process(cls, processor: Any, images: list[Image.Image], prompts: list[str]) -> BatchFeature:
        batch = super().process(processor, images, prompts)
        batch.pop("labels", None)
        is_text = batch["input_ids"] != processor.image_token_id
        batch["token_type_ids"] = (is_text & batch["attention_mask"].bool()).long()
        return batch

    @classmethod
    def tiny_image_processor(cls) -> Any:
        return SiglipImageProcessorPil(size={"height": 224, "width": 224}, image_seq_length=256)

    @classmethod
    def tiny_config(cls, tokenizer: Any, *, text_model_type: str = "gemma", **overrides: Any) -> PaliGemmaConfig:
        hidden = overrides.pop("hidden_size", 64)
        text = {
            "model_type": text_model_type,
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if text_model_type == "gemma2":
            text.update(query_pre_attn_scalar=16, sliding_window=512)
        vision = {
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 14,
            "image_size": 224,
            "vision_use_head": False,
            "projection_dim": hidden,
        }
        return PaliGemmaConfig(
            text_config=text,
            vision_config=vision,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            projection_dim=hidden,
            hidden_size=hidden,
            vocab_size=len(tokenizer),
            **overrides,
        )

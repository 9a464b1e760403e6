"""Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE backbones (stock ``transformers`` classes).

Prompt schemes (paper-notes §2):

* ``long`` (default) — the full chat format with the system prompt and the question
  "What action should the robotic arm take to <instruction>";
* ``short`` — ``<|im_start|><image><instruction>\\n``.

The processor expands ``<|image_pad|>`` to the image's token count (224² → 64 tokens for
Qwen2.5-VL; for Qwen3-VL 49 with the default pixel budget, 64 with the released checkpoints'
minimum of 256² pixels) and returns ``mm_token_type_ids``, which the model needs for
its M-RoPE positions (without it Qwen2.5-VL silently falls back to 1-D RoPE).
"""

from __future__ import annotations

from typing import Any

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
)

from vlm4vla.backbones.base import VLABackbone, register_backbone

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
SYSTEM_PROMPT = "You are a helpful assistant."
QUESTION = "What action should the robotic arm take to"


class _NoVideoQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's stock processor without a video processor (those need torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class _NoVideoQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3-VL's stock processor without a video processor (those need torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class _QwenVLBackbone(VLABackbone):
    prompt_schemes = ("long", "short")
    image_processor_class = Qwen2VLImageProcessorPil
    processor_class: type = _NoVideoQwen2_5_VLProcessor
    action_query_token = "<|endoftext|>"
    vision_encoder_path = "model.visual"
    language_model_path = "model.language_model"
    # Attention and MLP projections of the language model only (plain names would also hit
    # the vision tower's MLP).
    lora_target_modules = (
        r".*language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    )
    tiny_special_tokens = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    tiny_extra_tokens = ("<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    tiny_patch_size = 14

    @classmethod
    def format_prompt(cls, instruction: str, scheme: str) -> str:
        if scheme == "long":
            return (
                f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
                f"<|im_start|>user\n{IMAGE_PLACEHOLDER}{QUESTION} {instruction}<|im_end|>\n"
                "<|im_start|>assistant\n"
            )
        if scheme == "short":
            return f"<|im_start|>{IMAGE_PLACEHOLDER}{instruction}\n"
        raise ValueError(f"prompt_scheme: {scheme!r} is not one of {list(cls.prompt_schemes)}")

    @classmethod
    def build_processor(cls, tokenizer: Any, image_processor: Any) -> Any:
        return cls.processor_class(image_processor=image_processor, tokenizer=tokenizer)

    @classmethod
    def _tiny_token_ids(cls, tokenizer: Any) -> dict[str, int]:
        ids = tokenizer.convert_tokens_to_ids
        return {
            "image_token_id": ids("<|image_pad|>"),
            "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"),
            "vision_end_token_id": ids("<|vision_end|>"),
        }

    @classmethod
    def _tiny_special_ids(cls, tokenizer: Any) -> dict[str, int]:
        # Qwen has no BOS; the config validator wants an id inside the (tiny) vocabulary.
        return {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.pad_token_id}

    @classmethod
    def tiny_image_processor(cls) -> Any:
        return Qwen2VLImageProcessorPil(patch_size=cls.tiny_patch_size, merge_size=2, temporal_patch_size=2)


@register_backbone("qwen2.5-vl")
class Qwen2_5_VLBackbone(_QwenVLBackbone):
    """Qwen2.5-VL (3B, 7B): window-attention ViT with patch 14, M-RoPE language model."""

    hf_model_class = Qwen2_5_VLForConditionalGeneration
    hf_config_class = Qwen2_5_VLConfig
    decoder_layer_class_names = ("Qwen2_5_VLDecoderLayer",)
    vision_block_class_names = ("Qwen2_5_VLVisionBlock",)

    @classmethod
    def tiny_config(cls, tokenizer: Any, **overrides: Any) -> Qwen2_5_VLConfig:
        hidden = overrides.pop("hidden_size", 64)
        tie = overrides.pop("tie_word_embeddings", True)
        heads = 4
        text = {
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": tie,
            # mrope_section must sum to head_dim / 2.
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            **cls._tiny_special_ids(tokenizer),
        }
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": cls.tiny_patch_size,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden,
        }
        return Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=tie, **cls._tiny_token_ids(tokenizer), **overrides
        )


class _Qwen3VLFamily(_QwenVLBackbone):
    processor_class = _NoVideoQwen3VLProcessor
    tiny_patch_size = 16

    @classmethod
    def tiny_image_processor(cls) -> Any:
        return Qwen2VLImageProcessorPil(
            patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )

    @classmethod
    def _tiny_text_config(cls, tokenizer: Any, hidden: int, tie: bool) -> dict[str, Any]:
        return {
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": tie,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
            **cls._tiny_special_ids(tokenizer),
        }

    @classmethod
    def _tiny_vision_config(cls, hidden: int) -> dict[str, Any]:
        return {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "num_position_embeddings": 64,  # must be a square
            "deepstack_visual_indexes": [0],
            "out_hidden_size": hidden,
        }


@register_backbone("qwen3-vl")
class Qwen3VLBackbone(_Qwen3VLFamily):
    """Qwen3-VL dense (2B, 4B, 8B): patch-16 ViT with DeepStack, interleaved M-RoPE."""

    hf_model_class = Qwen3VLForConditionalGeneration
    hf_config_class = Qwen3VLConfig
    decoder_layer_class_names = ("Qwen3VLTextDecoderLayer",)
    vision_block_class_names = ("Qwen3VLVisionBlock",)

    @classmethod
    def tiny_config(cls, tokenizer: Any, **overrides: Any) -> Qwen3VLConfig:
        hidden = overrides.pop("hidden_size", 64)
        tie = overrides.pop("tie_word_embeddings", True)
        return Qwen3VLConfig(
            text_config=cls._tiny_text_config(tokenizer, hidden, tie),
            vision_config=cls._tiny_vision_config(hidden),
            tie_word_embeddings=tie,
            **cls._tiny_token_ids(tokenizer),
            **overrides,
        )


@register_backbone("qwen3-vl-moe")
class Qwen3VLMoeBackbone(_Qwen3VLFamily):
    """Qwen3-VL-MoE (30B-A3B): as Qwen3-VL with sparse-MoE MLPs whose experts are 3-D parameters."""

    hf_model_class = Qwen3VLMoeForConditionalGeneration
    hf_config_class = Qwen3VLMoeConfig
    decoder_layer_class_names = ("Qwen3VLMoeTextDecoderLayer",)
    vision_block_class_names = ("Qwen3VLMoeVisionBlock",)
    # MoE layers have no gate/up/down Linear modules; their experts are fused 3-D parameters
    # that peft reaches through ``target_parameters``.
    lora_target_modules = r".*language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    lora_target_parameters = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")

    @classmethod
    def tiny_config(cls, tokenizer: Any, **overrides: Any) -> Qwen3VLMoeConfig:
        hidden = overrides.pop("hidden_size", 64)
        tie = overrides.pop("tie_word_embeddings", True)
        text = cls._tiny_text_config(tokenizer, hidden, tie)
        text.update(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1)
        return Qwen3VLMoeConfig(
            text_config=text,
            vision_config=cls._tiny_vision_config(hidden),
            tie_word_embeddings=tie,
            **cls._tiny_token_ids(tokenizer),
            **overrides,
        )

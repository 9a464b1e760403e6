"""Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE backbones (stock ``transformers`` classes).

Prompt schemes (paper-notes §2):

* ``long`` (default) — the full chat format with the system prompt and the question
  "What action should the robotic arm take to <instruction>";
* ``short`` — ``<|im_start|><image><instruction>\\n``.

The image processor gets the released code's pixel budget (vlm4vla/model/vlm_builder.py:
``min_pixels = 256·28·28``, ``max_pixels = 1280·28·28``), so a 224² image is upscaled to 448²:
Qwen2.5-VL (patch 14, merge 2, factor 28) sees 32×32 = 1024 patches → 256 image tokens,
Qwen3-VL (patch 16, factor 32) 28×28 = 784 patches → 196 tokens. The processor expands
``<|image_pad|>`` to that count and returns ``mm_token_type_ids``, which the model needs for its
M-RoPE positions (without it Qwen2.5-VL silently falls back to 1-D RoPE).

Switches (`vlm4vla.policy.config.BACKBONE_SWITCHES`):

* ``qwen_positions="1d"`` — the released code runs the language model on ``inputs_embeds``
  without the image grid, so no M-RoPE: Qwen2.5-VL gets ``cumsum(attention_mask) - 1``
  (what the stock ``get_rope_index`` falls back to without ``input_ids``;
  vlm4vla/model/backbone/roboqwen25vl.py), Qwen3-VL(-MoE) ``arange(L)`` over the whole padded
  row, with the ActionQuery, which the released code appends after the padding, at position
  ``L - 1`` (roboqwen3vl_internal.py, roboqwen3vlmoe.py). Reproduced here with explicit
  ``position_ids`` on the stock model.
* ``deepstack=False`` (Qwen3-VL, Qwen3-VL-MoE) — no DeepStack features into the language
  model, as the released MoE backbone (roboqwen3vlmoe.py) calls it.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
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
from vlm4vla.errors import ConfigError

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
SYSTEM_PROMPT = "You are a helpful assistant."
QUESTION = "What action should the robotic arm take to"

# The pixel budget the released code gives every Qwen processor (vlm4vla/model/vlm_builder.py).
RELEASED_MIN_PIXELS = 256 * 28 * 28
RELEASED_MAX_PIXELS = 1280 * 28 * 28
RELEASED_IMAGE_PROCESSOR = {"size": {"shortest_edge": RELEASED_MIN_PIXELS, "longest_edge": RELEASED_MAX_PIXELS}}


def smart_resize_side(side: int, factor: int, min_pixels: int, max_pixels: int) -> int:
    """Qwen2-VL's ``smart_resize`` for a square image: the processed side length."""
    resized = max(factor, round(side / factor) * factor)
    if resized * resized > max_pixels:
        resized = max(factor, math.floor(side / math.sqrt(side * side / max_pixels) / factor) * factor)
    elif resized * resized < min_pixels:
        resized = math.ceil(side * math.sqrt(min_pixels / (side * side)) / factor) * factor
    return resized


def _without_deepstack(module: Any, args: tuple, kwargs: Mapping[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook of a Qwen3-VL language model: no DeepStack inputs (``deepstack=False``)."""
    return args, {**kwargs, "deepstack_visual_embeds": None, "visual_pos_masks": None}


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
    switch_names = ("qwen_positions",)
    image_processor_overrides = RELEASED_IMAGE_PROCESSOR

    # Pixel budget without a processor (meta-device builds): the released one, as every build
    # with a processor uses it.
    default_pixel_budget: ClassVar[tuple[int, int]] = (RELEASED_MIN_PIXELS, RELEASED_MAX_PIXELS)

    def pixel_budget(self) -> tuple[int, int]:
        """(min_pixels, max_pixels) of the processor this backbone feeds its images to."""
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is not None:
            size = image_processor.size
            value = lambda key: size.get(key) if isinstance(size, dict) else getattr(size, key, None)  # noqa: E731
            low = getattr(image_processor, "min_pixels", None) or value("shortest_edge")
            high = getattr(image_processor, "max_pixels", None) or value("longest_edge")
            if low and high:
                return int(low), int(high)
        return self.default_pixel_budget

    def image_token_counts(self, image_size: int | None = None) -> tuple[int, int]:
        """The processor's ``smart_resize`` to a multiple of patch × merge within its pixel
        budget: ``(side / patch)²`` patches in the tower, ``/ merge²`` tokens in the LLM."""
        vision = self.config.vision_config
        patch, merge = int(vision.patch_size), int(getattr(vision, "spatial_merge_size", 2))
        side = smart_resize_side(image_size or self.image_size, patch * merge, *self.pixel_budget())
        patches = (side // patch) ** 2
        return patches // (merge * merge), patches

    # ------------------------------------------------------------------ positions
    @staticmethod
    @abc.abstractmethod
    def one_d_positions(attention_mask: torch.Tensor, action_query_index: torch.Tensor) -> torch.Tensor:
        """(B, L) positions of the released code's 1-D call (``qwen_positions="1d"``); each Qwen
        generation counts them its own way."""

    def model_inputs(self, inputs: dict[str, torch.Tensor], action_query_index: torch.Tensor) -> dict[str, Any]:
        if self.switches["qwen_positions"] != "1d":
            return inputs
        positions = self.one_d_positions(inputs["attention_mask"], action_query_index)
        # The same position on the temporal, height and width axes: plain 1-D RoPE.
        return {**inputs, "position_ids": positions.unsqueeze(0).expand(3, -1, -1)}

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
        raise ConfigError(f"prompt_scheme: {scheme!r} is not one of {list(cls.prompt_schemes)}")

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
        return {
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.pad_token_id,
        }

    @classmethod
    def tiny_image_processor(cls) -> Any:
        return Qwen2VLImageProcessorPil(
            patch_size=cls.tiny_patch_size,
            merge_size=2,
            temporal_patch_size=2,
            **copy.deepcopy(RELEASED_IMAGE_PROCESSOR),
        )


@register_backbone("qwen2.5-vl")
class Qwen2_5_VLBackbone(_QwenVLBackbone):
    """Qwen2.5-VL (3B, 7B): window-attention ViT with patch 14, M-RoPE language model."""

    hf_model_class = Qwen2_5_VLForConditionalGeneration
    hf_config_class = Qwen2_5_VLConfig
    decoder_layer_class_names = ("Qwen2_5_VLDecoderLayer",)
    vision_block_class_names = ("Qwen2_5_VLVisionBlock",)
    # ``tiny:qwen2.5-vl/sharding``: ~380 MB in fp32 with an untied LM head, large enough to
    # measure start-up memory under FSDP2 (tests/training/test_sharded_init.py).
    sized_variants = {"sharding": {"hidden_size": 768, "num_hidden_layers": 20, "tie_word_embeddings": False}}

    @staticmethod
    def one_d_positions(attention_mask: torch.Tensor, action_query_index: torch.Tensor) -> torch.Tensor:
        # Real tokens and the ActionQuery count up from 0 over attended tokens (the released
        # layout [prompt][padding][ActionQuery] gives the ActionQuery the same position as
        # ours, [prompt][ActionQuery][padding]); padding gets 1, as in the stock fallback.
        mask = attention_mask.long()
        return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)

    @classmethod
    def tiny_config(cls, tokenizer: Any, **overrides: Any) -> Qwen2_5_VLConfig:
        hidden = overrides.pop("hidden_size", 64)
        tie = overrides.pop("tie_word_embeddings", True)
        layers = overrides.pop("num_hidden_layers", 2)
        heads = hidden // 16  # head_dim 16: the mrope_section below sums to head_dim / 2
        text = {
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
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
            text_config=text,
            vision_config=vision,
            tie_word_embeddings=tie,
            **cls._tiny_token_ids(tokenizer),
            **overrides,
        )


class _Qwen3VLFamily(_QwenVLBackbone):
    processor_class = _NoVideoQwen3VLProcessor
    tiny_patch_size = 16
    switch_names = ("qwen_positions", "deepstack")

    def __init__(self, model: Any, processor: Any = None, **kwargs: Any) -> None:
        super().__init__(model, processor, **kwargs)
        if not self.switches["deepstack"]:
            # The stock model passes the vision tower's DeepStack features to its language
            # model; the released MoE backbone never does. Drop them on the way in.
            self.language_model.register_forward_pre_hook(_without_deepstack, with_kwargs=True)

    @staticmethod
    def one_d_positions(attention_mask: torch.Tensor, action_query_index: torch.Tensor) -> torch.Tensor:
        # arange over the whole row, padding included. The released code appends the
        # ActionQuery after the right padding, i.e. at the last position L - 1 of the row,
        # whatever the sample's length; ours sits right after the prompt and gets that position.
        bsz, length = attention_mask.shape
        positions = torch.arange(length, device=attention_mask.device).expand(bsz, length).clone()
        positions[torch.arange(bsz, device=attention_mask.device), action_query_index] = length - 1
        return positions

    @classmethod
    def tiny_image_processor(cls) -> Any:
        return Qwen2VLImageProcessorPil(
            patch_size=16,
            merge_size=2,
            temporal_patch_size=2,
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
            **copy.deepcopy(RELEASED_IMAGE_PROCESSOR),
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

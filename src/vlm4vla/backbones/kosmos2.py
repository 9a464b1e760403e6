"""Kosmos-2 backbone (stock ``Kosmos2ForConditionalGeneration``).

Prompt (paper-notes §2, where ``<p>``/``</p>`` are Kosmos-2's phrase tokens):
``<s><image> 64 image slots </image><phrase>instruction\\n</phrase><ActionQuery>``, no
``<grounding>`` token. The 64 slots are marked by ``image_embeds_position_mask``.
Kosmos-2 uses absolute sinusoidal positions derived from non-pad tokens, which right padding
leaves untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import CLIPImageProcessorPil, Kosmos2Config, Kosmos2ForConditionalGeneration, Kosmos2Processor

from vlm4vla.backbones.base import VLABackbone, register_backbone


@register_backbone("kosmos-2")
class Kosmos2Backbone(VLABackbone):
    """Kosmos-2 (1.6B): CLIP ViT-L/14 + 64 latent queries + a 24-layer Magneto decoder."""

    hf_model_class = Kosmos2ForConditionalGeneration
    hf_config_class = Kosmos2Config
    image_processor_class = CLIPImageProcessorPil
    prompt_schemes = ("default",)
    action_query_token = "</s>"
    vision_encoder_path = "vision_model"
    language_model_path = "text_model.model"
    decoder_layer_class_names = ("Kosmos2TextBlock",)
    vision_block_class_names = ("Kosmos2VisionEncoderLayer",)
    lora_target_modules = r".*text_model\.model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|ffn\.(fc1|fc2))"
    # <s>, <pad>, </s>, <unk> at ids 0-3 as in the real XLM-R based tokenizer.
    tiny_special_tokens = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}

    @classmethod
    def format_prompt(cls, instruction: str, scheme: str) -> str:
        return f"<phrase>{instruction}\n</phrase>"

    @classmethod
    def build_processor(cls, tokenizer: Any, image_processor: Any) -> Any:
        return Kosmos2Processor(image_processor=image_processor, tokenizer=tokenizer)

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # Kosmos-2 has no vision+text base model without the LM head: run the stock forward,
        # keeping one logit column, and read the decoder stack's output.
        captured: list[torch.Tensor] = []
        hook = self.language_model.register_forward_hook(
            lambda module, args, output: captured.append(output.last_hidden_state)
        )
        try:
            self.model(**inputs, use_cache=False, logits_to_keep=1)
        finally:
            hook.remove()
        return captured[0]

    @classmethod
    def tiny_image_processor(cls) -> Any:
        return CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})

    @classmethod
    def tiny_config(cls, tokenizer: Any, **overrides: Any) -> Kosmos2Config:
        hidden = overrides.pop("hidden_size", 64)
        text = {
            "vocab_size": len(tokenizer),
            "embed_dim": hidden,
            "layers": 2,
            "attention_heads": 4,
            "ffn_dim": 2 * hidden,
            "max_position_embeddings": 512,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        vision = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 14,
        }
        return Kosmos2Config(text_config=text, vision_config=vision, latent_query_num=64, **overrides)

"""Kosmos-2 backbone (stock ``Kosmos2ForConditionalGeneration``).

Prompt (paper-notes §2, where ``<p>``/``</p>`` are Kosmos-2's phrase tokens):
``<s><image> 64 image slots </image><phrase>instruction\\n</phrase><ActionQuery>``, no
``<grounding>`` token. The 64 slots are marked by ``image_embeds_position_mask``.
Kosmos-2 uses absolute sinusoidal positions derived from non-pad tokens, which right padding
leaves untouched.

Switch ``kosmos2_prompt="released"``: the released code's input instead
(vlm4vla/data/data_utils.py, ``preprocess_text_kosmos``; vlm4vla/model/backbone/base_backbone.py,
``forward_continuous``): the literal text ``<s><image><image_pad></image><p>{instruction}\n</p>``
through the plain tokenizer with its special tokens (the real XLM-R tokenizer adds another
``<s>`` and a ``</s>``; ``<image_pad>``, ``<p>`` and ``</p>`` are no Kosmos-2 tokens and split
into word pieces; ``<image>``/``</image>`` enclose no image), with the 64 image embeddings put
before all of it. Here the 64 slots are the first 64 positions of ``image_embeds_position_mask``,
so the stock model writes its image embeddings there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image
from transformers import (
    BatchFeature,
    CLIPImageProcessorPil,
    Kosmos2Config,
    Kosmos2ForConditionalGeneration,
    Kosmos2Processor,
)

from vlm4vla.backbones.base import VLABackbone, register_backbone

# The released code's text for Kosmos-2 (vlm4vla/data/data_utils.py), instruction stripped.
RELEASED_PROMPT = "<s><image><image_pad></image><p>{instruction}\n</p>"


@register_backbone("kosmos-2")
class Kosmos2Backbone(VLABackbone):
    """Kosmos-2 (1.6B): CLIP ViT-L/14 + 64 latent queries + a 24-layer Magneto decoder."""

    hf_model_class = Kosmos2ForConditionalGeneration
    hf_config_class = Kosmos2Config
    encode_runs_lm_head = True  # `encode` runs the stock forward (one logit column)
    image_processor_class = CLIPImageProcessorPil
    prompt_schemes = ("default",)
    action_query_token = "</s>"
    vision_encoder_path = "vision_model"
    language_model_path = "text_model.model"
    decoder_layer_class_names = ("Kosmos2TextBlock",)
    vision_block_class_names = ("Kosmos2VisionEncoderLayer",)
    lora_target_modules = (
        r".*text_model\.model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|ffn\.(fc1|fc2))"
    )
    # <s>, <pad>, </s>, <unk> at ids 0-3 as in the real XLM-R based tokenizer.
    tiny_special_tokens = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    switch_names = ("kosmos2_prompt",)

    def image_token_counts(self, image_size: int | None = None) -> tuple[int, int]:
        """64 latent image slots in the language model; the CLIP patches + CLS in the tower."""
        vision = self.config.vision_config
        return int(self.config.latent_query_num), (int(vision.image_size) // int(vision.patch_size)) ** 2 + 1

    @classmethod
    def format_prompt(cls, instruction: str, scheme: str) -> str:
        return f"<phrase>{instruction}\n</phrase>"

    @classmethod
    def build_processor(cls, tokenizer: Any, image_processor: Any) -> Any:
        return Kosmos2Processor(image_processor=image_processor, tokenizer=tokenizer)

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
        if switches.get("kosmos2_prompt") != "released":
            return super().build_inputs(processor, images, instructions, prompt_scheme=prompt_scheme, switches=switches)
        tokenizer = processor.tokenizer
        text = tokenizer(
            [RELEASED_PROMPT.format(instruction=t) for t in instructions],
            return_tensors="pt",
            padding=True,
            padding_side="right",
        )
        bsz = len(instructions)
        slots = int(getattr(processor, "num_image_tokens", 64))
        # Placeholder ids for the image slots, as the stock processor numbers them (replaced
        # by the image embeddings; they only must not be the pad id).
        first = tokenizer.unk_token_id + 1
        slot_ids = torch.arange(first, first + slots).expand(bsz, slots)
        ones, zeros = torch.ones(bsz, slots, dtype=torch.long), torch.zeros_like(text["input_ids"])
        batch = BatchFeature(
            {
                "pixel_values": processor.image_processor(images, return_tensors="pt")["pixel_values"],
                "input_ids": torch.cat([slot_ids, text["input_ids"]], dim=1),
                "attention_mask": torch.cat([ones, text["attention_mask"].long()], dim=1),
                "image_embeds_position_mask": torch.cat([ones, zeros], dim=1),
            }
        )
        return cls.append_action_query(batch, processor)

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

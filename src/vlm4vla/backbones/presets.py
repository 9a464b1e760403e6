"""The nine backbones of the VLM4VLA paper as named presets: hub id + architecture.

The architecture hyperparameters are those published in each checkpoint's ``config.json``
(only the keys that differ from the ``transformers`` config class defaults). They let the
library build a real-size model on the meta device for sizing (``vlm4vla params``) or with
random weights for from-scratch training, without downloading anything but the tokenizer.
``backbone_params`` is the parameter count the configuration gives (tied weights once) and
equals the paper's Table 9 sizes. ``processor`` holds the image-processor settings the released
code sets on top of the checkpoint's (vlm4vla/model/vlm_builder.py: the Qwen pixel budget
``min_pixels = 256·28·28``, ``max_pixels = 1280·28·28``), used by every build with a processor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vlm4vla.backbones.base import VLABackbone, get_backbone
from vlm4vla.backbones.qwen_vl import RELEASED_IMAGE_PROCESSOR
from vlm4vla.errors import ConfigError
from vlm4vla.registry import Registry


@dataclass(frozen=True)
class Preset:
    """A named model size: which backbone family, which checkpoint, which architecture."""

    name: str
    backbone: str
    hub_id: str
    config: dict[str, Any] = field(repr=False)
    backbone_params: int
    paper_head_params: str
    processor: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def backbone_class(self) -> type[VLABackbone]:
        return get_backbone(self.backbone)

    def build(
        self,
        weights: Literal["pretrained", "random", "meta"] = "pretrained",
        *,
        path: str | os.PathLike | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> VLABackbone:
        """Build the backbone.

        * ``"pretrained"`` — real weights from ``path`` (a local directory, e.g. an auxiliary
          fine-tuned VLM) or the preset's hub id;
        * ``"random"`` — the same architecture trained from scratch: Xavier-uniform weights as
          in the released code (`VLABackbone.init_from_scratch`); the processor still comes from
          ``path`` / the hub id;
        * ``"meta"`` — on the meta device, no memory and no processor (sizing).

        The processor gets the preset's ``processor`` settings on top of the checkpoint's.
        """
        cls = self.backbone_class
        source = os.fspath(path) if path is not None else self.hub_id
        if weights == "pretrained":
            return cls.from_pretrained(source, dtype=dtype, image_processor_kwargs=self.processor, **kwargs)
        if weights == "random":
            cls.resolve_switches(kwargs.get("switches"))
            local = os.path.isdir(source)
            processor = kwargs.pop("processor", None) or cls.load_processor(
                source, local_files_only=local, image_processor_kwargs=self.processor
            )
            backbone = cls.from_config(self.config, processor=processor, dtype=dtype, **kwargs)
            backbone.init_from_scratch()
            return backbone
        if weights == "meta":
            return cls.from_config(self.config, device="meta", dtype=dtype, **kwargs)
        raise ConfigError(f"weights: expected 'pretrained', 'random' or 'meta', got {weights!r}")


PRESETS: Registry[Preset] = Registry("preset")

for _preset in (
    Preset(
        name='qwen2.5-vl-3b',
        backbone='qwen2.5-vl',
        hub_id='Qwen/Qwen2.5-VL-3B-Instruct',
        config={'text_config': {'vocab_size': 151936,
                                'hidden_size': 2048,
                                'intermediate_size': 11008,
                                'num_hidden_layers': 36,
                                'num_attention_heads': 16,
                                'num_key_value_heads': 2,
                                'tie_word_embeddings': True},
                'vision_config': {'depth': 32,
                                  'hidden_size': 1280,
                                  'intermediate_size': 3420,
                                  'num_heads': 16,
                                  'patch_size': 14,
                                  'window_size': 112,
                                  'fullatt_block_indexes': [7, 15, 23, 31],
                                  'spatial_merge_size': 2,
                                  'temporal_patch_size': 2,
                                  'out_hidden_size': 2048},
                'tie_word_embeddings': True},
        backbone_params=3_754_622_976,
        paper_head_params='6.58M',
        processor=RELEASED_IMAGE_PROCESSOR,
    ),
    Preset(
        name='qwen2.5-vl-7b',
        backbone='qwen2.5-vl',
        hub_id='Qwen/Qwen2.5-VL-7B-Instruct',
        config={'text_config': {'vocab_size': 152064,
                                'hidden_size': 3584,
                                'intermediate_size': 18944,
                                'num_hidden_layers': 28,
                                'num_attention_heads': 28,
                                'num_key_value_heads': 4,
                                'tie_word_embeddings': False},
                'vision_config': {'depth': 32,
                                  'hidden_size': 1280,
                                  'intermediate_size': 3420,
                                  'num_heads': 16,
                                  'patch_size': 14,
                                  'window_size': 112,
                                  'fullatt_block_indexes': [7, 15, 23, 31],
                                  'spatial_merge_size': 2,
                                  'temporal_patch_size': 2,
                                  'out_hidden_size': 3584}},
        backbone_params=8_292_166_656,
        paper_head_params='11.69M',
        processor=RELEASED_IMAGE_PROCESSOR,
    ),
    Preset(
        name='qwen3-vl-2b',
        backbone='qwen3-vl',
        hub_id='Qwen/Qwen3-VL-2B-Instruct',
        config={'text_config': {'vocab_size': 151936,
                                'hidden_size': 2048,
                                'num_hidden_layers': 28,
                                'intermediate_size': 6144,
                                'num_attention_heads': 16,
                                'num_key_value_heads': 8,
                                'head_dim': 128,
                                'tie_word_embeddings': True,
                                'rope_parameters': {'rope_type': 'default',
                                                    'rope_theta': 5000000.0,
                                                    'mrope_section': [24, 20, 20],
                                                    'mrope_interleaved': True}},
                'vision_config': {'depth': 24,
                                  'hidden_size': 1024,
                                  'intermediate_size': 4096,
                                  'num_heads': 16,
                                  'patch_size': 16,
                                  'num_position_embeddings': 2304,
                                  'deepstack_visual_indexes': [5, 11, 17],
                                  'out_hidden_size': 2048},
                'tie_word_embeddings': True},
        backbone_params=2_127_532_032,
        paper_head_params='6.58M',
        processor=RELEASED_IMAGE_PROCESSOR,
    ),
    Preset(
        name='qwen3-vl-4b',
        backbone='qwen3-vl',
        hub_id='Qwen/Qwen3-VL-4B-Instruct',
        config={'text_config': {'vocab_size': 151936,
                                'hidden_size': 2560,
                                'num_hidden_layers': 36,
                                'intermediate_size': 9728,
                                'num_attention_heads': 32,
                                'num_key_value_heads': 8,
                                'head_dim': 128,
                                'tie_word_embeddings': True,
                                'rope_parameters': {'rope_type': 'default',
                                                    'rope_theta': 5000000.0,
                                                    'mrope_section': [24, 20, 20],
                                                    'mrope_interleaved': True}},
                'vision_config': {'depth': 24,
                                  'hidden_size': 1024,
                                  'intermediate_size': 4096,
                                  'num_heads': 16,
                                  'patch_size': 16,
                                  'num_position_embeddings': 2304,
                                  'deepstack_visual_indexes': [5, 11, 17],
                                  'out_hidden_size': 2560},
                'tie_word_embeddings': True},
        backbone_params=4_437_815_808,
        paper_head_params='8.02M',
        processor=RELEASED_IMAGE_PROCESSOR,
    ),
    Preset(
        name='qwen3-vl-8b',
        backbone='qwen3-vl',
        hub_id='Qwen/Qwen3-VL-8B-Instruct',
        config={'text_config': {'vocab_size': 151936,
                                'hidden_size': 4096,
                                'num_hidden_layers': 36,
                                'intermediate_size': 12288,
                                'num_attention_heads': 32,
                                'num_key_value_heads': 8,
                                'head_dim': 128,
                                'tie_word_embeddings': False,
                                'rope_parameters': {'rope_type': 'default',
                                                    'rope_theta': 5000000.0,
                                                    'mrope_section': [24, 20, 20],
                                                    'mrope_interleaved': True}},
                'vision_config': {'depth': 27,
                                  'hidden_size': 1152,
                                  'intermediate_size': 4304,
                                  'num_heads': 16,
                                  'patch_size': 16,
                                  'num_position_embeddings': 2304,
                                  'deepstack_visual_indexes': [8, 16, 24],
                                  'out_hidden_size': 4096}},
        backbone_params=8_767_123_696,
        paper_head_params='13.92M',
        processor=RELEASED_IMAGE_PROCESSOR,
    ),
    Preset(
        name='qwen3-vl-30b-a3b',
        backbone='qwen3-vl-moe',
        hub_id='Qwen/Qwen3-VL-30B-A3B-Instruct',
        config={'text_config': {'vocab_size': 151936,
                                'hidden_size': 2048,
                                'num_hidden_layers': 48,
                                'intermediate_size': 6144,
                                'num_attention_heads': 32,
                                'num_key_value_heads': 4,
                                'head_dim': 128,
                                'tie_word_embeddings': False,
                                'rope_parameters': {'rope_type': 'default',
                                                    'rope_theta': 5000000.0,
                                                    'mrope_section': [24, 20, 20],
                                                    'mrope_interleaved': True},
                                'moe_intermediate_size': 768,
                                'num_experts': 128,
                                'num_experts_per_tok': 8,
                                'decoder_sparse_step': 1},
                'vision_config': {'depth': 27,
                                  'hidden_size': 1152,
                                  'intermediate_size': 4304,
                                  'num_heads': 16,
                                  'patch_size': 16,
                                  'num_position_embeddings': 2304,
                                  'deepstack_visual_indexes': [8, 16, 24],
                                  'out_hidden_size': 2048}},
        backbone_params=31_070_754_032,
        paper_head_params='6.58M',
        processor=RELEASED_IMAGE_PROCESSOR,
    ),
    Preset(
        name='paligemma-3b',
        backbone='paligemma',
        hub_id='google/paligemma-3b-pt-224',
        config={'text_config': {'model_type': 'gemma',
                                'vocab_size': 257216,
                                'hidden_size': 2048,
                                'intermediate_size': 16384,
                                'num_hidden_layers': 18,
                                'num_attention_heads': 8,
                                'num_key_value_heads': 1,
                                'head_dim': 256},
                'vision_config': {'model_type': 'siglip_vision_model',
                                  'hidden_size': 1152,
                                  'intermediate_size': 4304,
                                  'num_hidden_layers': 27,
                                  'num_attention_heads': 16,
                                  'patch_size': 14,
                                  'image_size': 224,
                                  'vision_use_head': False,
                                  'projection_dim': 2048},
                'image_token_index': 257152,
                'projection_dim': 2048,
                'hidden_size': 2048,
                'vocab_size': 257216},
        backbone_params=2_923_466_480,
        paper_head_params='6.58M',
    ),
    Preset(
        name='paligemma2-3b',
        backbone='paligemma',
        hub_id='google/paligemma2-3b-pt-224',
        config={'text_config': {'model_type': 'gemma2',
                                'vocab_size': 257216,
                                'hidden_size': 2304,
                                'intermediate_size': 9216,
                                'num_hidden_layers': 26,
                                'num_attention_heads': 8,
                                'num_key_value_heads': 4,
                                'head_dim': 256,
                                'query_pre_attn_scalar': 256,
                                'sliding_window': 4096},
                'vision_config': {'model_type': 'siglip_vision_model',
                                  'hidden_size': 1152,
                                  'intermediate_size': 4304,
                                  'num_hidden_layers': 27,
                                  'num_attention_heads': 16,
                                  'patch_size': 14,
                                  'image_size': 224,
                                  'vision_use_head': False,
                                  'projection_dim': 2304},
                'image_token_index': 257152,
                'projection_dim': 2304,
                'hidden_size': 2304,
                'vocab_size': 257216},
        backbone_params=3_032_242_416,
        paper_head_params='7.27M',
    ),
    Preset(
        name='kosmos-2',
        backbone='kosmos-2',
        hub_id='microsoft/kosmos-2-patch14-224',
        config={},
        backbone_params=1_664_485_376,
        paper_head_params='6.58M',
    ),
):
    PRESETS.register(_preset.name, _preset)


def list_presets() -> list[str]:
    """Names of all presets, sorted."""
    return PRESETS.names()


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name lists the valid ones."""
    return PRESETS.get(name)

"""`VLABackbone`: the one class a user subclasses to turn a Hugging Face VLM into a VLA backbone.

A backbone owns a stock ``transformers`` model and its processor. It turns a batch of
(image, instruction) pairs into model inputs laid out as
``[image tokens][instruction tokens][ActionQuery]`` with the family's own prompt scheme, runs
the model and returns the last-layer hidden state at the ActionQuery slot, shape (B, H).

The ActionQuery is inserted without touching the model's code: the prompt ends with a
placeholder token whose embedding row is replaced, through a forward hook on the model's input
embeddings, by the learnable vector the policy passes in. Every family's own position logic
(M-RoPE, PaliGemma's prefix mask, Kosmos-2's image slots) therefore still holds.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoTokenizer, BatchFeature, PretrainedConfig, PreTrainedModel

from vlm4vla.errors import ConfigError, MissingFileError
from vlm4vla.imaging import resize_image
from vlm4vla.registry import Registry

BACKBONES: Registry[type[VLABackbone]] = Registry("backbone")


def register_backbone(name: str):
    """Class decorator registering a `VLABackbone` subclass under ``name`` (timm style)."""

    def decorator(cls: type[VLABackbone]) -> type[VLABackbone]:
        if not (isinstance(cls, type) and issubclass(cls, VLABackbone)):
            raise TypeError(f"@register_backbone({name!r}) must decorate a VLABackbone subclass, got {cls!r}")
        cls.name = name
        BACKBONES.register(name, cls)
        return cls

    return decorator


def list_backbones() -> list[str]:
    """Names of all registered backbone families, sorted."""
    return BACKBONES.names()


def get_backbone(name: str) -> type[VLABackbone]:
    """The backbone class registered under ``name``; unknown names list the valid ones."""
    return BACKBONES.get(name)


ImagesLike = torch.Tensor | np.ndarray | Sequence[Image.Image | np.ndarray | torch.Tensor]


def _to_pil_images(images: ImagesLike, image_size: int) -> list[Image.Image]:
    """Validate a batch of RGB images and resize each to ``image_size``² (paper: 224 first).

    Accepted: a uint8 array/tensor (B, H, W, 3) or (B, 3, H, W), or a sequence of PIL images
    or uint8 (H, W, 3) arrays/tensors.
    """
    if isinstance(images, (torch.Tensor, np.ndarray)):
        if images.ndim != 4:
            raise ValueError(
                f"images: expected a batch of shape (B, H, W, 3) or (B, 3, H, W), got shape {tuple(images.shape)}"
            )
        items: Sequence[Any] = list(images)
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        items = images
    else:
        raise ValueError(f"images: expected a uint8 array/tensor or a list of images, got {type(images).__name__}")
    if len(items) == 0:
        raise ValueError("images: the batch is empty")
    pil: list[Image.Image] = []
    for i, item in enumerate(items):
        if isinstance(item, Image.Image):
            img = item.convert("RGB")
        else:
            array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            if array.dtype != np.uint8:
                raise ValueError(f"images[{i}]: expected dtype uint8 (0..255 RGB), got {array.dtype}")
            if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
                array = np.transpose(array, (1, 2, 0))
            if array.ndim != 3 or array.shape[-1] != 3:
                raise ValueError(f"images[{i}]: expected shape (H, W, 3) or (3, H, W), got {tuple(array.shape)}")
            img = Image.fromarray(np.ascontiguousarray(array), mode="RGB")
        if img.size != (image_size, image_size):
            img = resize_image(img, image_size)  # bicubic, as every released backbone (vlm4vla.imaging)
        pil.append(img)
    return pil


def _check_instructions(instructions: Sequence[str], batch_size: int) -> list[str]:
    if isinstance(instructions, str) or not isinstance(instructions, Sequence):
        raise ValueError("instructions: expected a list of strings, one per image")
    if len(instructions) == 0:
        raise ValueError("instructions: the list is empty")
    if len(instructions) != batch_size:
        raise ValueError(f"instructions: got {len(instructions)} for {batch_size} images; expected one per image")
    for i, text in enumerate(instructions):
        if not isinstance(text, str):
            raise ValueError(f"instructions[{i}]: expected str, got {type(text).__name__}")
    # Surrounding whitespace is stripped, as the released code does (vlm4vla/data/data_utils.py).
    return [text.strip() for text in instructions]


@dataclass
class VLAInputProcessor:
    """Picklable (image, instruction) → model-input function of one backbone.

    DataLoader workers call it in the collate step, so tokenisation and image preprocessing
    run in parallel with training. It holds the processor, never the model.
    """

    backbone_class: type[VLABackbone]
    processor: Any
    prompt_scheme: str
    image_size: int = 224
    switches: dict[str, Any] = field(default_factory=dict)

    def __call__(self, images: ImagesLike, instructions: Sequence[str]) -> BatchFeature:
        pil = _to_pil_images(images, self.image_size)
        texts = _check_instructions(instructions, len(pil))
        return self.backbone_class.build_inputs(
            self.processor, pil, texts, prompt_scheme=self.prompt_scheme, switches=self.switches
        )

    @property
    def tokenizer(self):
        return self.processor.tokenizer


class VLABackbone(nn.Module, abc.ABC):
    """Base class of a VLM family used as a VLA backbone.

    Subclasses declare:

    * ``hf_model_class`` / ``hf_config_class`` — stock ``transformers`` classes;
    * ``prompt_schemes`` (first = default) and :meth:`format_prompt` — the paper's layout
      of the instruction, with the image placeholder the processor expands;
    * :meth:`build_processor` / ``image_processor_class`` — the processor around a tokenizer;
    * ``vision_encoder_path``, ``language_model_path`` — dotted module paths in the HF model;
      ``decoder_layer_class_names`` / ``vision_block_class_names`` — what FSDP shards;
    * ``action_query_token`` — an existing special token used as the ActionQuery placeholder;
    * ``lora_target_modules`` — a regex over module names for LoRA on the language model;
    * :meth:`tiny_config` / :meth:`tiny_image_processor` / ``tiny_special_tokens`` — a tiny
      random configuration used by the tests (and the quickstart);
    * optionally ``switch_names`` — the released-code switches
      (`vlm4vla.policy.config.BACKBONE_SWITCHES`) the family accepts, and
      ``image_processor_overrides`` — image-processor settings applied on top of a
      checkpoint's own when a backbone is built (not when a bundle's processor is loaded).

    and may override :meth:`process` (the processor call), :meth:`build_inputs` (the whole
    (images, instructions) → inputs step), :meth:`model_inputs` (extra model arguments) and
    :meth:`encode` (the model call returning the last hidden state).
    """

    name: ClassVar[str] = ""
    hf_model_class: ClassVar[type[PreTrainedModel]]
    hf_config_class: ClassVar[type[PretrainedConfig]]
    image_processor_class: ClassVar[type]
    prompt_schemes: ClassVar[tuple[str, ...]] = ("default",)
    action_query_token: ClassVar[str]
    vision_encoder_path: ClassVar[str]
    language_model_path: ClassVar[str]
    decoder_layer_class_names: ClassVar[tuple[str, ...]] = ()
    vision_block_class_names: ClassVar[tuple[str, ...]] = ()
    lora_target_modules: ClassVar[str] = ""
    lora_target_parameters: ClassVar[tuple[str, ...]] = ()
    # Values for the extra column appended with the ActionQuery, per (B, L) processor output.
    action_query_fill: ClassVar[dict[str, int]] = {"attention_mask": 1}
    tiny_special_tokens: ClassVar[dict[str, str]] = {}
    tiny_extra_tokens: ClassVar[tuple[str, ...]] = ()
    switch_names: ClassVar[tuple[str, ...]] = ()
    image_processor_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        model: PreTrainedModel,
        processor: Any = None,
        *,
        prompt_scheme: str | None = None,
        image_size: int = 224,
        switches: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Instance attribute: the resolved values (every switch of the family, stock by default).
        self.switches = self.resolve_switches(switches)
        if prompt_scheme is None:
            prompt_scheme = self.prompt_schemes[0]
        if prompt_scheme not in self.prompt_schemes:
            raise ValueError(
                f"prompt_scheme: {prompt_scheme!r} is not one of {self.name}'s schemes {list(self.prompt_schemes)}"
            )
        if image_size <= 0:
            raise ConfigError(f"image_size: expected a positive integer, got {image_size}")
        self.model = model
        self.processor = processor
        self.prompt_scheme = prompt_scheme
        self.image_size = int(image_size)
        self._pending_query: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hook = self.model.get_input_embeddings().register_forward_hook(self._insert_action_query)

    # ------------------------------------------------------------------ sizes
    def image_token_counts(self, image_size: int | None = None) -> tuple[int, int]:
        """(language-model image tokens, vision-tower tokens) per image of side ``image_size``
        (default: the backbone's own), as the processor that training uses computes them.

        The default is a fixed-resolution processor (PaliGemma, CLIP-style) that resizes to
        the vision encoder's ``image_size``; families with other arithmetic override it.
        """
        vision = self.config.vision_config
        if not hasattr(vision, "image_size"):
            raise ValueError(f"{self.name}: cannot derive the number of image tokens from its configuration")
        patches = (int(vision.image_size) // int(vision.patch_size)) ** 2
        return patches, patches

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        processor: Any = None,
        dtype: torch.dtype | str | None = None,
        prompt_scheme: str | None = None,
        image_size: int = 224,
        switches: Mapping[str, Any] | None = None,
        image_processor_kwargs: Mapping[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> VLABackbone:
        """Real weights from a hub id or a local directory (never downloads for a local path).

        The processor is the checkpoint's, with ``image_processor_kwargs`` (default: the
        family's ``image_processor_overrides``) applied on top.
        """
        cls.resolve_switches(switches)  # refuse a bad switch before loading any weight
        local = Path(name_or_path).is_dir()
        if local:
            model_kwargs.setdefault("local_files_only", True)
        elif Path(name_or_path).expanduser().exists() or str(name_or_path).startswith((".", "/", "~")):
            raise MissingFileError(f"{name_or_path}: not a model directory (expected config.json and weights)")
        if dtype is not None:
            model_kwargs["dtype"] = dtype
        model = cls.hf_model_class.from_pretrained(name_or_path, **model_kwargs)
        if processor is None:
            if image_processor_kwargs is None:
                image_processor_kwargs = cls.image_processor_overrides
            processor = cls.load_processor(
                name_or_path, local_files_only=local, image_processor_kwargs=image_processor_kwargs
            )
        return cls(model, processor, prompt_scheme=prompt_scheme, image_size=image_size, switches=switches)

    @classmethod
    def from_config(
        cls,
        config: PretrainedConfig | Mapping[str, Any],
        *,
        processor: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        prompt_scheme: str | None = None,
        image_size: int = 224,
        switches: Mapping[str, Any] | None = None,
    ) -> VLABackbone:
        """The architecture of ``config`` with the model class's own (Hugging Face) init (tests,
        bundles, which load their weights afterwards); :meth:`init_from_scratch` re-draws it as
        the released code's from-scratch training does.

        ``device="meta"`` allocates no memory: use it to count parameters of real-size models.
        """
        cls.resolve_switches(switches)
        if isinstance(config, Mapping):
            config = cls.hf_config_class(**config)
        elif not isinstance(config, cls.hf_config_class):
            raise TypeError(f"config: expected {cls.hf_config_class.__name__} or a dict, got {type(config).__name__}")
        ctx = torch.device(device) if device is not None else contextlib.nullcontext()
        with ctx:
            model = cls.hf_model_class._from_config(config, dtype=dtype) if dtype else cls.hf_model_class(config)
        return cls(model, processor, prompt_scheme=prompt_scheme, image_size=image_size, switches=switches)

    @classmethod
    def load_processor(
        cls, name_or_path: str | os.PathLike, *, image_processor_kwargs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """The family's processor from a hub id or directory (tokenizer + PIL image processor).

        The stored settings are kept (a bundle's processor is loaded as it was saved) unless
        ``image_processor_kwargs`` overrides some.
        """
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        overrides = copy.deepcopy(dict(image_processor_kwargs or {}))
        image_processor = cls.image_processor_class.from_pretrained(name_or_path, **kwargs, **overrides)
        return cls.build_processor(tokenizer, image_processor)

    @classmethod
    @abc.abstractmethod
    def build_processor(cls, tokenizer: Any, image_processor: Any) -> Any:
        """Wrap a tokenizer and an image processor in the family's stock processor class."""

    @classmethod
    def tiny(
        cls,
        *,
        seed: int = 0,
        prompt_scheme: str | None = None,
        image_size: int = 224,
        switches: Mapping[str, Any] | None = None,
        **overrides: Any,
    ):
        """A tiny random-init backbone with a real processor around an in-process tokenizer.

        Used by tests and the quickstart: builds in a second, needs no download. Its processor
        has the same settings as the full-size one (Qwen's pixel budget included), so it
        produces the same number of image tokens.
        """
        from vlm4vla.backbones.tiny import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer(cls.tiny_special_tokens, cls.tiny_extra_tokens)
        processor = cls.build_processor(tokenizer, cls.tiny_image_processor())
        config = cls.tiny_config(tokenizer, **overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = cls.from_config(
                config, processor=processor, prompt_scheme=prompt_scheme, image_size=image_size, switches=switches
            )
        return backbone

    # ------------------------------------------------------------------ released-code switches
    @classmethod
    def resolve_switches(cls, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every switch of this family with its value (the stock one unless ``values`` sets it).

        A switch set (not ``None``) for a family it does not apply to, or to a value it does not
        take, is refused in one line.
        """
        from vlm4vla.policy.config import BACKBONE_SWITCHES

        values = {k: v for k, v in (values or {}).items() if v is not None}
        for name, value in values.items():
            if name not in BACKBONE_SWITCHES:
                raise ConfigError(f"{name}: not a backbone switch; expected one of {sorted(BACKBONE_SWITCHES)}")
            if name not in cls.switch_names:
                families = [f for f in list_backbones() if name in get_backbone(f).switch_names]
                raise ConfigError(
                    f"{name}: applies to the {', '.join(families)} backbone(s) only, not {cls.name or cls.__name__}"
                )
            allowed = BACKBONE_SWITCHES[name]
            if type(value) is not type(allowed[0]) or value not in allowed:
                raise ConfigError(f"{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return {name: values.get(name, BACKBONE_SWITCHES[name][0]) for name in cls.switch_names}

    # ------------------------------------------------------------------ from scratch
    @torch.no_grad()
    def init_from_scratch(self) -> None:
        """Re-draw the weights as the released code's from-scratch training does.

        Its ``initialize_param`` (vlm4vla/model/backbone/base_backbone.py, ``reinit``) walks the
        modules from the top: a module whose ``weight`` has ≥ 2 dimensions (Linear, Embedding,
        Conv — tied LM heads included) gets Xavier-uniform weights and a zero bias, and its
        sub-modules are left alone; any other module is descended into. Parameters not called
        ``weight`` (MoE expert tensors, Kosmos-2's latent queries, class embeddings) and 1-D
        weights (norms) keep the model's own init. A no-op on the meta device.
        """
        if self.device.type == "meta":
            return
        pending = [self.model]
        while pending:
            module = pending.pop()
            weight = getattr(module, "weight", None)
            if module is not self.model and isinstance(weight, torch.Tensor) and weight.dim() >= 2:
                nn.init.xavier_uniform_(weight)
                bias = getattr(module, "bias", None)
                if isinstance(bias, torch.Tensor):
                    bias.zero_()
            else:
                pending.extend(module.children())

    @classmethod
    def tiny_config(cls, tokenizer: Any, **overrides: Any) -> PretrainedConfig:
        """A tiny random configuration (2 layers, hidden 64) around ``tokenizer``; optional."""
        raise TypeError(f"{cls.__name__} defines no tiny configuration: override tiny_config to use tiny()")

    @classmethod
    def tiny_image_processor(cls) -> Any:
        """The image processor of the tiny configuration; optional."""
        raise TypeError(f"{cls.__name__} defines no tiny image processor: override tiny_image_processor to use tiny()")

    # ------------------------------------------------------------------ prompt + inputs
    @classmethod
    @abc.abstractmethod
    def format_prompt(cls, instruction: str, scheme: str) -> str:
        """The text given to the processor for one sample (image placeholder included)."""

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
        """Model inputs for validated images (resized) and stripped instructions: the prompt
        layout, the processor call and the ActionQuery slot. ``switches`` are the backbone's
        resolved released-code switches, for families whose inputs depend on one."""
        prompts = [cls.format_prompt(text, prompt_scheme) for text in instructions]
        batch = cls.process(processor, images, prompts)
        return cls.append_action_query(batch, processor)

    @classmethod
    def process(cls, processor: Any, images: list[Image.Image], prompts: list[str]) -> BatchFeature:
        """Run the processor on a batch; sequences are padded on the right."""
        return processor(text=prompts, images=images, return_tensors="pt", padding=True, padding_side="right")

    @classmethod
    def append_action_query(cls, batch: BatchFeature, processor: Any) -> BatchFeature:
        """Append the ActionQuery placeholder after each sample's last real token.

        With right padding the slot of sample b is ``attention_mask[b].sum()``; one column is
        added so the longest sample has room. ``action_query_index`` (B,) records the slots.
        """
        attention = batch["attention_mask"]
        bsz, length = attention.shape
        index = attention.sum(dim=1).long()
        rows = torch.arange(bsz)
        out = dict(batch)
        for key, value in batch.items():
            if not (isinstance(value, torch.Tensor) and value.shape[:2] == (bsz, length) and value.ndim == 2):
                continue
            pad_value = processor.tokenizer.pad_token_id if key == "input_ids" else 0
            widened = torch.cat([value, value.new_full((bsz, 1), pad_value)], dim=1)
            if key == "input_ids":
                widened[rows, index] = cls.action_query_token_id(processor)
            else:
                widened[rows, index] = cls.action_query_fill.get(key, 0)
            out[key] = widened
        out["action_query_index"] = index
        return BatchFeature(out)

    @classmethod
    def action_query_token_id(cls, processor: Any) -> int:
        token_id = processor.tokenizer.convert_tokens_to_ids(cls.action_query_token)
        if token_id is None or token_id == processor.tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {cls.action_query_token!r} token to hold the ActionQuery slot")
        return int(token_id)

    @property
    def input_processor(self) -> VLAInputProcessor:
        """The picklable (images, instructions) → inputs function for data loaders."""
        if self.processor is None:
            raise RuntimeError(f"{self.name} backbone was built without a processor (meta device?)")
        return VLAInputProcessor(
            type(self), self.processor, self.prompt_scheme, self.image_size, switches=dict(self.switches)
        )

    def prepare_inputs(self, images: ImagesLike, instructions: Sequence[str]) -> BatchFeature:
        """Model inputs for a batch of (image, instruction) pairs, ActionQuery slot included."""
        return self.input_processor(images, instructions)

    # ------------------------------------------------------------------ forward
    def _insert_action_query(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self._pending_query is None:
            return None
        index, query = self._pending_query
        rows = torch.arange(output.shape[0], device=output.device)
        slot = torch.zeros(output.shape[:2], dtype=torch.bool, device=output.device)
        slot[rows, index.to(output.device)] = True
        return torch.where(slot.unsqueeze(-1), query.to(dtype=output.dtype, device=output.device), output)

    @contextlib.contextmanager
    def _action_query_at(self, index: torch.Tensor, query: torch.Tensor) -> Iterator[None]:
        self._pending_query = (index, query)
        try:
            yield
        finally:
            self._pending_query = None

    def model_inputs(self, inputs: dict[str, torch.Tensor], action_query_index: torch.Tensor) -> dict[str, Any]:
        """The keyword arguments of the model call for processed inputs (on the device), given the
        ActionQuery slots (B,). The stock model takes them as they are; families whose
        released-code switches change the call (explicit positions …) add to them."""
        return inputs

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Last-layer hidden states (B, L, H) of the language model for processed inputs."""
        return self.model.model(**inputs, use_cache=False).last_hidden_state

    def forward(self, inputs: Mapping[str, torch.Tensor], action_query: torch.Tensor) -> torch.Tensor:
        """Hidden state (B, H) at the ActionQuery slot, with ``action_query`` (H,) inserted there."""
        inputs = dict(inputs)
        try:
            index = inputs.pop("action_query_index")
        except KeyError:
            raise ValueError("inputs: missing 'action_query_index'; build inputs with prepare_inputs()") from None
        if action_query.shape != (self.hidden_size,):
            raise ValueError(f"action_query: expected shape ({self.hidden_size},), got {tuple(action_query.shape)}")
        device, dtype = self.device, self.model.dtype
        # Images follow the model's precision (a bf16 evaluation casts the weights, not the processor).
        inputs = {
            k: (v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device))
            if isinstance(v, torch.Tensor)
            else v
            for k, v in inputs.items()
        }
        index = index.to(device)
        inputs = self.model_inputs(inputs, index)
        with self._action_query_at(index, action_query):
            hidden = self.encode(inputs)
        return hidden[torch.arange(hidden.shape[0], device=device), index]

    # ------------------------------------------------------------------ structure
    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _submodule(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    @property
    def vision_encoder(self) -> nn.Module:
        return self._submodule(self.vision_encoder_path)

    @property
    def language_model(self) -> nn.Module:
        return self._submodule(self.language_model_path)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def output_embeddings(self) -> nn.Module | None:
        return self.model.get_output_embeddings()

    def _modules_by_class_name(self, names: tuple[str, ...]) -> list[nn.Module]:
        return [m for m in self.model.modules() if type(m).__name__ in names]

    @property
    def decoder_layers(self) -> list[nn.Module]:
        """The language model's decoder layers (FSDP / activation-checkpointing units)."""
        return self._modules_by_class_name(self.decoder_layer_class_names)

    @property
    def vision_blocks(self) -> list[nn.Module]:
        """The vision encoder's transformer blocks (FSDP / activation-checkpointing units)."""
        return self._modules_by_class_name(self.vision_block_class_names)

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters that never reach the ActionQuery hidden state (an untied LM head).

        They are frozen by the policy so DDP does not wait for their gradients.
        """
        head = self.output_embeddings
        if head is None:
            return []
        embedding_ids = {id(p) for p in self.word_embeddings.parameters()}
        return [p for p in head.parameters() if id(p) not in embedding_ids]

    sized_variants: ClassVar[dict[str, dict[str, Any]]] = {}
    """``tiny:<family>/<name>`` builds of a chosen size for measurements (not parametrised over by
    the test-suite like ``tiny_variants``)."""
    encode_runs_lm_head: ClassVar[bool] = False
    """Whether `encode` runs the stock forward through the LM head (Kosmos-2), which then stays."""

    def drop_unused_lm_head(self) -> list[str]:
        """Remove an untied LM head that `encode` never runs (it holds vocabulary × hidden weights,
        ~1 GB for Qwen2.5-VL-7B in bf16, that no action ever depends on). Returns the state-dict
        names (relative to ``self.model``) of the removed parameters, ``[]`` when there is none."""
        if self.encode_runs_lm_head or not self.unused_parameters():
            return []
        head = self.output_embeddings
        name = next(n for n, m in self.model.named_modules() if m is head)
        parent_name, _, attr = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        removed = [f"{name}.{n}" for n, _ in head.named_parameters()]
        setattr(parent, attr, None)
        return removed

    def extra_repr(self) -> str:
        switches = "".join(f", {k}={v!r}" for k, v in self.switches.items())
        return f"name={self.name!r}, prompt_scheme={self.prompt_scheme!r}, image_size={self.image_size}{switches}"

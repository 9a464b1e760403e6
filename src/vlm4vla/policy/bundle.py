"""Policy bundles: a self-contained directory that rebuilds a `VLAPolicy` without its training run.

Layout::

    bundle/
      vla_config.json      backbone family + its HF config, chunk size, prompt scheme, image size,
                           loss weight, LoRA settings, action-normaliser statistics
      model.safetensors    every policy weight (backbone, ActionQuery, head); no pickle
      processor/           tokenizer and image-processor files

Loading never executes code from the bundle and never downloads anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

if TYPE_CHECKING:
    from vlm4vla.policy.policy import VLAPolicy

CONFIG_NAME = "vla_config.json"
WEIGHTS_NAME = "model.safetensors"
PROCESSOR_DIR = "processor"
FORMAT_VERSION = 1


class BundleError(ValueError):
    """A missing or invalid policy bundle; the message names the file and the field."""


def bundle_config(policy: VLAPolicy) -> dict[str, Any]:
    backbone = policy.backbone
    normalizer = policy.normalizer
    return {
        "format_version": FORMAT_VERSION,
        "backbone": backbone.name,
        "backbone_config": backbone.config.to_dict(),
        "prompt_scheme": backbone.prompt_scheme,
        "image_size": backbone.image_size,
        "chunk_size": policy.chunk_size,
        "action_dim": 7,
        "gripper_loss_weight": policy.gripper_loss_weight,
        "lora": dataclasses.asdict(policy.lora_settings) if policy.lora_settings is not None else None,
        "normalizer": normalizer.to_dict() if normalizer is not None else None,
    }


def save_bundle(policy: VLAPolicy, directory: str | os.PathLike, *, state_dict: dict | None = None) -> Path:
    """Write ``policy`` as a bundle. The directory is written atomically (temp dir + rename),
    so an interrupted save never leaves a half bundle, and an existing bundle is replaced
    only once the new one is complete.

    ``state_dict`` lets distributed training pass consolidated full weights.
    """
    directory = Path(directory)
    if policy.backbone.processor is None:
        raise BundleError("policy has no processor (built on the meta device?); a bundle needs one")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(bundle_config(policy), indent=2, sort_keys=True))
        if state_dict is None:
            save_model(policy, str(tmp / WEIGHTS_NAME))
        else:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in _dedupe(state_dict).items()}, str(tmp / WEIGHTS_NAME))
        policy.backbone.processor.save_pretrained(tmp / PROCESSOR_DIR)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _dedupe(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the second name of tied tensors (safetensors stores each storage once)."""
    seen: dict[tuple[int, int], str] = {}
    out = {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.device.type != "meta" else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = name
        out[name] = tensor
    return out


def read_bundle_config(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such policy bundle directory")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise BundleError(f"{path}: missing; {directory} is not a policy bundle")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from None
    for field in ("backbone", "backbone_config", "chunk_size"):
        if field not in config:
            raise BundleError(f"{path}: missing field {field!r}")
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {config['format_version']} is newer than this vlm4vla supports ({FORMAT_VERSION})"
        )
    return config


def check_bundle_files(directory: str | os.PathLike) -> dict[str, Any]:
    """Check a bundle's files without loading any weights: the config, a complete safetensors
    file (header read through a memory map, so cheap for any model size) and ``processor/``.

    Returns the bundle config. Every problem is a `BundleError` naming the file.
    """
    directory = Path(directory)
    config = read_bundle_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise BundleError(f"{weights}: missing; the bundle has no weights")
    try:
        # safetensors checks that the header's tensor offsets cover the file exactly, which
        # catches a truncated copy or a damaged header before any simulator starts.
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise BundleError(f"{weights}: truncated or corrupt safetensors file ({_first_line(err)})") from None
    processor = directory / PROCESSOR_DIR
    if not processor.is_dir():
        raise BundleError(f"{processor}: missing; the bundle has no processor (tokenizer and image processor) files")
    return config


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_bundle(directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> VLAPolicy:
    from vlm4vla.backbones import get_backbone
    from vlm4vla.policy.policy import LoraSettings, VLAPolicy

    directory = Path(directory)
    config = check_bundle_files(directory)
    weights = directory / WEIGHTS_NAME
    cls = get_backbone(config["backbone"])
    processor_dir = (directory / PROCESSOR_DIR).resolve()
    try:
        # An absolute path of an existing directory: transformers never takes it for a hub id.
        processor = cls.load_processor(processor_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise BundleError(f"{directory / PROCESSOR_DIR}: unreadable processor files ({_first_line(err)})") from None
    backbone = cls.from_config(
        config["backbone_config"],
        processor=processor,
        prompt_scheme=config.get("prompt_scheme"),
        image_size=config.get("image_size", 224),
    )
    normalizer = None
    if config.get("normalizer") is not None:
        from vlm4vla.data.normalization import normalizer_from_dict

        normalizer = normalizer_from_dict(config["normalizer"])
    policy = VLAPolicy(
        backbone,
        chunk_size=int(config["chunk_size"]),
        gripper_loss_weight=float(config.get("gripper_loss_weight", 0.01)),
        normalizer=normalizer,
    )
    if config.get("lora"):
        policy.apply_lora(LoraSettings(**config["lora"]))
    try:
        missing, unexpected = load_model(policy, str(weights), strict=False)
    except SafetensorError as err:
        raise BundleError(f"{weights}: truncated or corrupt safetensors file ({_first_line(err)})") from None
    except (RuntimeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[-1].strip()
        raise BundleError(
            f"{weights}: weights do not match the {config['backbone']} architecture in {CONFIG_NAME} ({first_line})"
        ) from None
    # Tied weights are stored once; every other parameter must be present.
    tied = {name for name in missing if _is_tied(policy, name)}
    if set(missing) - tied or unexpected:
        raise BundleError(
            f"{weights}: weights do not match the {config['backbone']} architecture in {CONFIG_NAME} "
            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    return policy.to(device).eval()


def _is_tied(policy: VLAPolicy, name: str) -> bool:
    params = dict(policy.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return target is not None and any(p is target and n != name for n, p in params.items())

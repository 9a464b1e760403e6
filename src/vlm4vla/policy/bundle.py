"""Policy bundles: a self-contained directory that rebuilds a `VLAPolicy` without its training run.

Layout::

    bundle/
      vla_config.json      the policy's `VLAConfig` (backbone, its HF config, chunk size, prompt
                           scheme, image size, loss weight, switches, LoRA, normaliser) + format_version
      model.safetensors    every policy weight (backbone, ActionQuery, head); no pickle
      processor/           tokenizer and image-processor files

This module is the file format only; `VLAPolicy.save_pretrained` / `from_pretrained` build on it.
Loading never executes code from the bundle and never downloads anything. Format 1 bundles
(before `VLAConfig`) are read too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from vlm4vla.errors import VLM4VLAError
from vlm4vla.policy.config import VLAConfig

if TYPE_CHECKING:
    import torch

    from vlm4vla.policy.policy import VLAPolicy

CONFIG_NAME = "vla_config.json"
WEIGHTS_NAME = "model.safetensors"
PROCESSOR_DIR = "processor"
FORMAT_VERSION = 2


class BundleError(VLM4VLAError, ValueError):
    """A missing or invalid policy bundle; the message names the file and the field."""


def bundle_config(policy: VLAPolicy) -> dict[str, Any]:
    """``vla_config.json``: the policy's `VLAConfig` and the format version."""
    return {"format_version": FORMAT_VERSION, **policy.config.to_dict()}


def config_from_bundle_dict(data: dict[str, Any], source: str) -> VLAConfig:
    """The `VLAConfig` of a ``vla_config.json`` of any supported format version."""
    data = dict(data)
    version = data.pop("format_version", 1)
    if version == 1:
        # Format 1: the family name as backbone, no switches, an "action_dim" that was always 7.
        data.pop("action_dim", None)
    try:
        return VLAConfig.from_dict(data, source=source)
    except (TypeError, ValueError) as err:
        raise BundleError(_first_line(err) if source in str(err) else f"{source}: {_first_line(err)}") from None


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
            from safetensors.torch import save_model

            save_model(policy, str(tmp / WEIGHTS_NAME))
        else:
            from safetensors.torch import save_file

            save_file(
                {k: v.detach().contiguous().cpu() for k, v in _dedupe(state_dict).items()}, str(tmp / WEIGHTS_NAME)
            )
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
    return validate_bundle_config(config, str(path))


def validate_bundle_config(config: Any, source: str) -> dict[str, Any]:
    """The checks every ``vla_config.json`` passes before use, from a file or a policy server."""
    if not isinstance(config, dict):
        raise BundleError(f"{source}: expected a JSON object, got {type(config).__name__}")
    for field in ("backbone", "backbone_config", "chunk_size"):
        if field not in config:
            raise BundleError(f"{source}: missing field {field!r}")
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise BundleError(
            f"{source}: format_version {config['format_version']} is newer than this vlm4vla supports ({FORMAT_VERSION})"
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
        with safe_open(str(weights), framework="numpy"):  # numpy: no torch import for a header check
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


def read_bundle(directory: str | os.PathLike) -> tuple[VLAConfig, Path, Path]:
    """Check a bundle's files and return its `VLAConfig`, the weights file and the processor
    folder (an absolute path, which transformers never takes for a hub id)."""
    directory = Path(directory)
    raw = check_bundle_files(directory)
    config = config_from_bundle_dict(raw, str(directory / CONFIG_NAME))
    return config, directory / WEIGHTS_NAME, (directory / PROCESSOR_DIR).resolve()


def load_weights(policy: VLAPolicy, weights: Path, family: str) -> None:
    """Load a bundle's safetensors weights into ``policy`` (tied weights are stored once)."""
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(policy, str(weights), strict=False)
    except SafetensorError as err:
        raise BundleError(f"{weights}: truncated or corrupt safetensors file ({_first_line(err)})") from None
    except (RuntimeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[-1].strip()
        raise BundleError(
            f"{weights}: weights do not match the {family} architecture in {CONFIG_NAME} ({first_line})"
        ) from None
    tied = {name for name in missing if _is_tied(policy, name)}
    dropped = tuple(getattr(policy, "dropped_keys", ()))
    unexpected = [name for name in unexpected if name not in dropped]
    if set(missing) - tied or unexpected:
        raise BundleError(
            f"{weights}: weights do not match the {family} architecture in {CONFIG_NAME} "
            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )


def _is_tied(policy: VLAPolicy, name: str) -> bool:
    params = dict(policy.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return target is not None and any(p is target and n != name for n, p in params.items())

"""The metadata message of a policy server: which bundle it serves, in which settings.

A client checks a bundle from this message exactly as in-process evaluation checks it from the
bundle's files (``config`` is the bundle's ``vla_config.json``), and after a reconnect it checks
that the identity (everything but the ``server`` runtime fields) has not changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import vlm4vla
from vlm4vla.policy.bundle import WEIGHTS_NAME


def normalizer_hash(config: Mapping[str, Any]) -> str | None:
    """sha256 of the bundle's action normaliser (statistics and gripper convention), canonical JSON."""
    normalizer = config.get("normalizer")
    if normalizer is None:
        return None
    return hashlib.sha256(json.dumps(normalizer, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bundle_metadata(
    name: str, path: Path, step: int | None, config: Mapping[str, Any], *, device: str, dtype: str
) -> dict[str, Any]:
    """Everything a client needs to evaluate through the server as it would in process."""
    normalizer = config.get("normalizer") or {}
    return {
        "checkpoint": name,
        "path": str(Path(path).resolve()),
        "step": step,
        "chunk_size": int(config["chunk_size"]),
        "action_dim": int(config.get("action_dim", 7)),
        "gripper": normalizer.get("gripper"),
        "image_pipeline": config.get("image_pipeline"),
        "image_size": config.get("image_size"),
        "normalizer_hash": normalizer_hash(config),
        "weights_sha256": file_sha256(Path(path) / WEIGHTS_NAME),
        "device": device,
        "dtype": dtype,
        "vlm4vla_version": vlm4vla.__version__,
        "config": dict(config),
    }

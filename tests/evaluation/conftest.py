"""Tiny policy bundles (random Qwen2.5-VL, chunk 4) in a run directory, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tests.evaluation.doubles  # noqa: F401  (registers the test-double suites)


def _save(directory: Path, seed: int, chunk_size: int = 4) -> Path:
    from vlm4vla.backbones import get_backbone
    from vlm4vla.policy.policy import VLAPolicy

    torch.manual_seed(seed)
    VLAPolicy(get_backbone("qwen2.5-vl").tiny(), chunk_size=chunk_size).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``run/checkpoints/step=000200`` and ``step=000100`` (created out of order on purpose)."""
    run = tmp_path_factory.mktemp("run")
    _save(run / "checkpoints" / "step=000200", seed=1)
    _save(run / "checkpoints" / "step=000100", seed=0)
    return run

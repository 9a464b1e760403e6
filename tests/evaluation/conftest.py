"""Tiny policy bundles (random Qwen2.5-VL, chunk 4) in a run directory, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.evaluation.doubles  # noqa: F401  (registers the test-double suites)
from vlm4vla.evaluation.testing import write_tiny_bundle


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``run/checkpoints/step=000200`` and ``step=000100`` (created out of order on purpose)."""
    run = tmp_path_factory.mktemp("run")
    write_tiny_bundle(run / "checkpoints" / "step=000200", seed=1, gripper="signed")
    write_tiny_bundle(run / "checkpoints" / "step=000100", seed=0, gripper="signed")
    return run

"""Datasets written once per test session (real on-disk layouts, see tests/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.calvin import write_calvin_dataset
from tests.fixtures.libero_hdf5 import write_libero_hdf5


@pytest.fixture(scope="session")
def calvin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 training episodes × 40 frames (ids from 53,819), 1 validation episode × 40 frames,
    3 language windows of 16 frames per episode (the last ends on the episode's last frame)."""
    return write_calvin_dataset(tmp_path_factory.mktemp("calvin") / "task_ABC_D")


@pytest.fixture(scope="session")
def libero_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 tasks × 3 demos of 20-22 steps, float64 actions, upside-down 128² images."""
    return write_libero_hdf5(
        tmp_path_factory.mktemp("libero") / "libero_10", num_tasks=2, demos_per_task=3, steps=20
    )

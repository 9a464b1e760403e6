"""End-to-end: `vlm4vla-eval` on the test-double suites with real tiny policy bundles."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlm4vla.cli.evaluate import main
from vlm4vla.evaluation import plugin
from vlm4vla.evaluation.plugin import KNOWN_SUITES, available_suites, load_evaluator
from vlm4vla.evaluation.sweep import SweepSettings, resolve_checkpoints, run_sweep

REPO = Path(__file__).resolve().parents[2]
TIMING = {"seconds"}


def _records(out: Path) -> dict[tuple[str, str], list[dict]]:
    cells = {}
    for path in sorted(out.glob("*/*/episodes.jsonl")):
        cells[(path.parent.parent.name, path.parent.name)] = [
            json.loads(line) for line in path.read_text().splitlines()
        ]
    return cells


def _outcomes(out: Path) -> dict:
    return {
        cell: sorted(tuple(sorted((k, json.dumps(v)) for k, v in r.items() if k not in TIMING)) for r in rs)
        for cell, rs in _records(out).items()
    }


def test_list_suites_and_unknown_suite(
    capsys: pytest.CaptureFixture[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["--list-suites"]) == 0
    listed = capsys.readouterr().out
    assert "reach\t" in listed and "reach-chain\t" in listed
    # As on a machine where the paper suites' plugins are not installed.
    monkeypatch.setattr(plugin, "_entry_points", dict)
    missing = next(name for name in KNOWN_SUITES if name not in available_suites())
    assert main(["--suite", missing, "--ckpt", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vlm4vla-eval: error: suite '{missing}' is not installed (installed: ")
    assert KNOWN_SUITES[missing].split("  ")[0] in err and len(err.splitlines()) == 1


def test_sweep_run_dir_resume_and_reports(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["--suite", "reach", "--ckpt", str(run_dir / "checkpoints"), "--out", str(out), "--episodes-per-task", "3",
            "--modes", "full,single", "--video", "1", "--quiet"]  # fmt: skip
    assert main(args) == 0
    records = _records(out)
    assert sorted(records) == [(c, m) for c in ("step=000100", "step=000200") for m in ("full", "single")]
    for (ckpt, mode), rs in records.items():
        assert len(rs) == 6 and {r["mode"] for r in rs} == {mode} and {r["checkpoint"] for r in rs} == {ckpt}
        # chunk 4: full queries every 4 steps, single every step
        per = 4 if mode == "full" else 1
        assert all(r["policy_queries"] == -(-r["steps"] // per) for r in rs)
        videos = sorted(p.relative_to(out / ckpt / mode).as_posix() for p in (out / ckpt / mode).rglob("*.mp4"))
        assert videos == ["videos/reach_left/0.mp4", "videos/reach_right/0.mp4"]
    summary = json.loads((out / "summary.json").read_text())
    cells = {(c["checkpoint"], c["mode"]): c for c in summary["cells"]}
    for key, rs in records.items():
        assert cells[key]["success_rate"] == pytest.approx(sum(r["success"] for r in rs) / len(rs))
        assert cells[key]["complete"] and set(cells[key]["metrics"]["per_task"]) == {"reach left", "reach right"}
    assert [c["step"] for c in summary["cells"]] == [100, 100, 200, 200]
    best = json.loads((out / "best.json").read_text())["best"]
    top = max(c["success_rate"] for c in summary["cells"])
    first = next(c for c in summary["cells"] if c["success_rate"] == top)
    assert (best["checkpoint"], best["mode"]) == (first["checkpoint"], first["mode"])
    assert (out / "curves.png").stat().st_size > 0 and (out / "summary.md").is_file()

    before = {p: p.read_bytes() for p in out.glob("*/*/episodes.jsonl")}
    assert main([*args[:-1]]) == 0  # re-run (with the progress bar): nothing to do
    assert "0 episodes run, 24 already done" in " ".join(capsys.readouterr().out.split())
    assert {p: p.read_bytes() for p in out.glob("*/*/episodes.jsonl")} == before


def test_results_do_not_depend_on_workers(tmp_path: Path, run_dir: Path) -> None:
    evaluator = load_evaluator("reach")
    checkpoints = resolve_checkpoints(run_dir)
    results = {}
    for workers in (1, 2):
        settings = SweepSettings(modes=["full", "half"], episodes_per_task=4, workers=workers)
        result = run_sweep(evaluator, checkpoints, tmp_path / f"w{workers}", settings)
        results[workers] = _outcomes(tmp_path / f"w{workers}")
        assert result.ran == 32 and result.stats.episodes == 32
        if workers == 2:
            # Requests already waiting share a forward (never more than one per worker); whether
            # two coincide depends on timing, so only the bound is asserted.
            assert set(result.stats.batch_sizes) <= {1, 2}
            assert sum(n * count for n, count in result.stats.batch_sizes.items()) == result.stats.samples
    assert results[1] == results[2]
    # The double is action-sensitive: the cells do not all agree.
    assert len({json.dumps(v) for v in results[1].values()}) > 1


def test_chained_suite_records_subtasks(tmp_path: Path, run_dir: Path) -> None:
    ckpt = run_dir / "checkpoints" / "step=000100"
    assert (
        main(["--suite", "reach-chain", "--ckpt", str(ckpt), "--out", str(tmp_path), "--modes", "half", "--quiet"]) == 0
    )
    records = _records(tmp_path)[("step=000100", "half")]
    assert len(records) == 2
    for r in records:
        assert r["completed"] == sum(s["success"] for s in r["subtasks"])
        assert r["steps"] == sum(s["steps"] for s in r["subtasks"])
        # the queue is cleared at each subtask: every subtask starts with a query (chunk 4, half → 2 per query)
        assert r["policy_queries"] == sum(-(-s["steps"] // 2) for s in r["subtasks"])
    cell = json.loads((tmp_path / "summary.json").read_text())["cells"][0]
    assert cell["headline_metric"] == "avg_len"
    assert cell["avg_len"] == pytest.approx(sum(r["completed"] for r in records) / 2)
    assert "chain_1" in cell["metrics"]


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vlm4vla-eval: error: ")
    return err


def test_bad_inputs(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = str(run_dir / "checkpoints" / "step=000100")
    out = str(tmp_path / "out")
    assert "no such policy bundle" in _error(
        capsys, ["--suite", "reach", "--ckpt", str(tmp_path / "nope"), "--out", out]
    )
    bad = tmp_path / "bad" / "step=000001"
    bad.mkdir(parents=True)
    (bad / "vla_config.json").write_text("{not json")
    assert "not valid JSON" in _error(capsys, ["--suite", "reach", "--ckpt", str(bad.parent), "--out", out])
    assert "neither a policy bundle" in _error(capsys, ["--suite", "reach", "--ckpt", str(tmp_path), "--out", out])
    err = _error(capsys, ["--suite", "reach-8d", "--ckpt", ckpt, "--out", out])
    assert "7-d actions" in err and "8-d" in err
    assert "chunks of 4 actions" in _error(capsys, ["--suite", "reach-maxchunk2", "--ckpt", ckpt, "--out", out])
    err = _error(capsys, ["--suite", "reach-nosim", "--ckpt", ckpt, "--out", out])
    assert "simulator unavailable" in err and "pip install fakesim" in err
    assert "unknown task(s) nope" in _error(
        capsys, ["--suite", "reach", "--ckpt", ckpt, "--out", out, "--tasks", "nope"]
    )
    assert not (tmp_path / "out" / "step=000100").exists()  # nothing ran


def test_simulator_import_error_in_worker(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = str(run_dir / "checkpoints" / "step=000100")
    for workers in ("1", "2"):
        err = _error(capsys, ["--suite", "reach-nosim-worker", "--ckpt", ckpt, "--out", str(tmp_path), "--workers", workers,
                              "--modes", "full", "--quiet"])  # fmt: skip
        assert "No module named 'fakesim_not_installed'; pip install fakesim" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_output_dir(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check_unwritable(tmp_path, run_dir, capsys)


def test_unwritable_output_dir_as_file(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    err = _error(capsys, ["--suite", "reach", "--ckpt", str(run_dir), "--out", str(blocker / "out")])
    assert "is not writable" in err and blocker.read_text() == "keep me"


def _check_unwritable(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    (out / "summary.json").write_text("old")
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        err = _error(capsys, ["--suite", "reach", "--ckpt", str(run_dir), "--out", str(out)])
        assert "is not writable" in err and (out / "summary.json").read_text() == "old"
    finally:
        out.chmod(stat.S_IRWXU)


def _cli(out: Path, ckpt: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "VLM4VLA_EVAL_PLUGINS": "tests.evaluation.doubles", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "vlm4vla.cli.evaluate", "--suite", "reach-slow", "--ckpt", str(ckpt), "--out", str(out),
         "--modes", "full,single", "--episodes-per-task", "2", "--quiet", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_run_resumes_exactly_once(tmp_path: Path, run_dir: Path, sig: signal.Signals) -> None:
    ckpt = run_dir / "checkpoints" / "step=000100"
    out = tmp_path / "out"
    proc = _cli(out, ckpt, "--workers", "2")
    log = out / "step=000100" / "full" / "episodes.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.exists() or log.read_text().count("\n") < 2):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "re-run the same command to resume" in stderr
    if sig == signal.SIGKILL:  # a kill mid-write leaves half a line: simulate the worst case
        with open(log, "ab") as f:
            f.write(b'{"task": "reach left", "episode_id": 1, "succ')
    done_before = sum(len(rs) for rs in _records_lenient(out).values())
    assert 2 <= done_before < 8

    proc = _cli(out, ckpt, "--workers", "1")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    records = _records(out)
    for cell in (("step=000100", "full"), ("step=000100", "single")):
        keys = [(r["task"], r["episode_id"]) for r in records[cell]]
        assert sorted(keys) == sorted((t, k) for t in ("reach left", "reach right") for k in range(2))
    cells = json.loads((out / "summary.json").read_text())["cells"]
    for c in cells:
        rs = records[(c["checkpoint"], c["mode"])]
        assert c["complete"] and c["episodes"] == 4
        assert c["success_rate"] == pytest.approx(sum(r["success"] for r in rs) / 4)


def _records_lenient(out: Path) -> dict:
    cells = {}
    for path in out.glob("*/*/episodes.jsonl"):
        cells[path] = [line for line in path.read_text().split("\n") if line.endswith("}")]
    return cells

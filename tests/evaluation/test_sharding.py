"""Sharded evaluation (issue 15): torchrun / srun ranks, independent ``--shard``s, ``--summarize``,
policy replicas, and the launch-level refusals. The oracle throughout is a single-process run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vlm4vla.cli.evaluate import main
from vlm4vla.errors import ConfigError
from vlm4vla.evaluation.devices import resolve_devices
from vlm4vla.evaluation.distributed import Launch, assign_shards, detect_launch, rendezvous_environment
from vlm4vla.evaluation.plugin import EvaluationError, load_evaluator
from vlm4vla.evaluation.store import CellStore, ResultsLock, StoreError
from vlm4vla.evaluation.sweep import SweepSettings, load_policy, resolve_checkpoints, run_sweep, summarize_results
from vlm4vla.evaluation.testing import launch_environment, stored_records, torchrun_eval_command

REPO = Path(__file__).resolve().parents[2]


def _records(out: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    return stored_records(out)


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- launch detection
def test_rank_and_world_size_come_from_torchrun_srun_or_shard() -> None:
    assert detect_launch({}) == Launch()
    torchrun = detect_launch({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.source) == (3, 8, 1, "torchrun")
    assert torchrun.grouped and not torchrun.writes_reports
    slurm = detect_launch(
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "0"}
    )
    assert (slurm.rank, slurm.world_size, slurm.source) == (0, 16, "slurm") and slurm.writes_reports
    # torchrun inside an allocation: torchrun's variables win over SLURM's
    both = detect_launch({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_LOCALID": "0"})  # fmt: skip
    assert (both.rank, both.source) == (1, "torchrun")
    assert detect_launch({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_LOCALID": "0"}).world_size == 1
    # the batch script of ``sbatch --ntasks=8`` (not an srun step): one process, no rendezvous
    assert detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}) == Launch()
    shard = detect_launch({}, shard="2/5")
    assert (shard.rank, shard.world_size, shard.source, shard.grouped, shard.writes_reports) == (
        2,
        5,
        "shard",
        False,
        False,
    )
    for bad, message in [("5/5", "0 ≤ INDEX < COUNT"), ("a/b", "expected INDEX/COUNT"), ("3", "expected INDEX/COUNT")]:
        with pytest.raises(ConfigError, match=message):
            detect_launch({}, shard=bad)
    with pytest.raises(ConfigError, match=r"\$RANK=2 with \$WORLD_SIZE=2: expected 0 ≤ rank < world size"):
        detect_launch({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match=r"\$SLURM_STEP_NUM_TASKS='x': expected an integer"):
        detect_launch({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "x", "SLURM_LOCALID": "0"})


def test_rendezvous_under_srun_needs_the_first_node_on_several_nodes() -> None:
    one_node = Launch(rank=1, world_size=8, local_rank=1, source="slurm")
    assert rendezvous_environment(one_node, {"SLURM_NNODES": "1", "SLURM_JOB_ID": "4242123"}) == {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(15000 + 2123),  # Lightning's rule: the job id's last four digits + 15000
    }
    with pytest.raises(ConfigError, match=r"\$MASTER_ADDR is not set; .*scontrol show hostnames"):
        rendezvous_environment(Launch(rank=9, world_size=16, local_rank=1, source="slurm"), {"SLURM_NNODES": "2"})
    given = {"MASTER_ADDR": "node001", "MASTER_PORT": "6000", "SLURM_NNODES": "2"}
    assert rendezvous_environment(one_node, given) == {"MASTER_ADDR": "node001", "MASTER_PORT": "6000"}


def test_shards_are_split_longest_first_onto_the_least_loaded_rank() -> None:
    # Hand-computed LPT: 5→r0, 3→r1, 3→r1 (3 < 5), 2→r0 (5 < 6), 2→r1 (6 < 7), 1→r0 (7 < 8)
    assert assign_shards([5, 3, 3, 2, 2, 1], 2) == [0, 1, 1, 0, 1, 0]
    # Unsorted plan: 5 (item 1)→r0, 3 (item 3)→r1, 2 (item 2)→r1, 1 (item 0)→r0 (tie 5 = 5: lower rank)
    assert assign_shards([1, 5, 2, 3], 2) == [0, 0, 1, 1]
    assert assign_shards([1, 1, 1, 1], 3) == [0, 1, 2, 0]  # equal costs keep plan order
    rng = np.random.default_rng(0)
    for _ in range(50):
        costs = rng.integers(1, 600, size=int(rng.integers(1, 40))).tolist()
        world = int(rng.integers(1, 9))
        owners = assign_shards(costs, world)
        loads = np.bincount(owners, weights=costs, minlength=world)
        # Graham's bound for list scheduling: the busiest rank ends within one job of the mean
        assert loads.max() <= sum(costs) / world + max(costs)
        assert assign_shards(costs, world) == owners


def test_replica_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_devices("auto") == ["cpu"] and resolve_devices("cpu,cpu") == ["cpu", "cpu"]
    assert resolve_devices("auto", local_rank=3) == ["cpu"]
    with pytest.raises(EvaluationError, match="no CUDA device is visible"):
        resolve_devices("cuda", local_rank=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_devices("auto") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]  # one replica per GPU
    assert resolve_devices("cuda", local_rank=2) == ["cuda:2"]  # torchrun: the local rank's GPU
    assert resolve_devices("cuda:1,cuda:3") == ["cuda:1", "cuda:3"]
    with pytest.raises(EvaluationError, match="local rank 4 has no GPU of its own"):
        resolve_devices("auto", local_rank=4)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_devices("auto", local_rank=5) == ["cuda:0"]  # srun --gpus-per-task=1: its own GPU
    with pytest.raises(EvaluationError, match="one device type per run, got cpu and cuda"):
        resolve_devices("cpu,cuda:0")


# ---------------------------------------------------------------- store
def test_a_cell_is_the_union_of_its_shard_files_and_only_the_own_tail_is_repaired(tmp_path: Path) -> None:
    cell = tmp_path / "cell"
    cell.mkdir()
    line = lambda k: json.dumps({"task": "t", "episode_id": k, "success": k % 2 == 0, "steps": k})  # noqa: E731
    (cell / "episodes.jsonl").write_text(line(0) + "\n" + line(1) + "\n")
    (cell / "episodes.rank1.jsonl").write_text(line(2) + "\n" + '{"task": "t", "epis')  # killed mid-write
    (cell / "episodes.rank12.jsonl").write_text(line(3) + "\n" + line(1) + "\n")
    (cell / "episodes.jsonl.bak").write_text("not a shard file")
    store = CellStore(cell, {}, rank=0)
    done = store.load()
    assert sorted(json.loads(k[1]) for k in done) == [0, 1, 2, 3]
    assert (cell / "episodes.rank1.jsonl").read_text().endswith('"epis')  # rank 1's to repair
    rank1 = CellStore(cell, {}, rank=1)
    rank1.load()
    assert (cell / "episodes.rank1.jsonl").read_text() == line(2) + "\n"
    rank1.append({"task": "t", "episode_id": 4, "success": True, "steps": 1})
    rank1.append({"task": "t", "episode_id": 0, "success": True, "steps": 1})  # done by rank 0: ignored
    assert (cell / "episodes.rank1.jsonl").read_text().count("\n") == 2
    assert len(CellStore(cell, {}).load(repair=False)) == 5


def test_a_launch_of_another_world_size_on_a_running_out_is_refused(tmp_path: Path) -> None:
    tmp_path.joinpath("out").mkdir()
    out = tmp_path / "out"
    running = ResultsLock(out, rank=1, world_size=4).acquire()
    try:
        with pytest.raises(StoreError) as err:
            ResultsLock(out, rank=0, world_size=2).acquire()
        message = str(err.value)
        assert "being written by a launch of world size 4" in message and "rank 1 of 4" in message
        assert "this one has world size 2" in message and "\n" not in message
        with pytest.raises(StoreError, match="in use by another vlm4vla-eval run"):
            ResultsLock(out, rank=1, world_size=4).acquire()  # the same rank twice
        ResultsLock(out, rank=2, world_size=4).acquire().release()  # the same launch: fine
    finally:
        running.release()
    ResultsLock(out, rank=0, world_size=2).acquire().release()  # a finished launch blocks nothing


# ---------------------------------------------------------------- sweeps
def _settings(**kw: Any) -> SweepSettings:
    return SweepSettings(**{"modes": ["full", "single"], "episodes_per_task": 3, "max_batch": 1, **kw})


def test_independent_shards_write_the_single_process_records_and_the_last_writes_the_reports(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluator = load_evaluator("reach")
    checkpoints = resolve_checkpoints(run_dir)
    single = tmp_path / "single"
    run_sweep(evaluator, checkpoints, single, _settings())
    expected = _records(single)
    assert len(expected) == 2 * 2 * 2 * 3

    out = tmp_path / "sharded"
    first = run_sweep(evaluator, checkpoints, out, _settings(), launch=detect_launch({}, shard="0/3"))
    assert not first.reported and not (out / "best.json").exists()
    assert 0 < first.ran < len(expected)
    # --summarize while shards are missing: counts shown, no incomplete cell can be best
    result = summarize_results(out)
    assert all(not c["complete"] for c in result.cells) and result.best is None
    assert json.loads((out / "best.json").read_text())["best"] is None
    assert main(["--summarize", str(out), "--quiet"]) == 0
    assert "incomplete cells: step=000100/full (" in capsys.readouterr().out

    second = run_sweep(evaluator, checkpoints, out, _settings(), launch=detect_launch({}, shard="1/3"))
    third = run_sweep(evaluator, checkpoints, out, _settings(), launch=detect_launch({}, shard="2/3"))
    assert not second.reported and third.reported  # the last shard to finish found every cell complete
    assert first.ran + second.ran + third.ran == len(expected)
    assert _records(out) == expected
    assert {p.name for p in out.glob("*/full/episodes*.jsonl")} == {
        "episodes.jsonl", "episodes.rank1.jsonl", "episodes.rank2.jsonl",
    }  # fmt: skip
    assert (out / "best.json").read_bytes() == (single / "best.json").read_bytes()
    assert (
        json.loads((out / "summary.json").read_text())["cells"]
        == json.loads((single / "summary.json").read_text())["cells"]
    )
    # rerunning a shard does nothing; --summarize rebuilds the same reports
    assert run_sweep(evaluator, checkpoints, out, _settings(), launch=detect_launch({}, shard="1/3")).ran == 0
    (out / "best.json").unlink()
    assert main(["--summarize", str(out), "--quiet"]) == 0
    assert "every cell is complete" in capsys.readouterr().out
    assert (out / "best.json").read_bytes() == (single / "best.json").read_bytes()


def test_shards_of_another_plan_and_more_shards_than_work_are_refused(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(run_dir / "checkpoints" / "step=000100")
    out = tmp_path / "out"
    base = ["--suite", "reach", "--ckpt", ckpt, "--out", str(out), "--modes", "full", "--quiet"]
    err = _error(capsys, [*base, "--episodes-per-task", "1", "--shard", "2/3"])
    assert err == (
        "vlm4vla-eval: error: rank 2 of 3 (shard): 3 ranks for 2 units of work (checkpoint × mode × episode, "
        "an env-sharing group counting once); use at most 2 ranks"
    )
    assert not list(out.glob("*/*/episodes*.jsonl"))
    assert main([*base, "--episodes-per-task", "2", "--shard", "0/2"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*.jsonl")}
    err = _error(capsys, [*base, "--episodes-per-task", "3", "--shard", "1/2"])
    assert "plan.json: written by --shard …/2 of a sweep with another plan" in err
    assert {p: p.read_bytes() for p in out.rglob("*.jsonl")} == before
    assert main([*base, "--episodes-per-task", "2", "--shard", "1/2"]) == 0
    assert len(_records(out)) == 4 and (out / "best.json").is_file()


def test_summarize_without_a_plan_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["--summarize", str(tmp_path)])
    assert (
        err
        == f"vlm4vla-eval: error: {tmp_path / 'plan.json'}: not found; --summarize needs a results directory written by vlm4vla-eval"
    )


class _Disagreeing:
    """A process group whose other rank computed another plan (started with other arguments)."""

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj, "another digest" if isinstance(obj, str) and len(obj) == 64 else obj]


def _as_rank0_of_two(out: Path, run_dir: Path, group: Any) -> None:
    """The sweep as rank 0 of a 2-rank torchrun launch whose other rank ``group`` stands in for."""
    launch = Launch(rank=0, world_size=2, source="torchrun")
    run_sweep(load_evaluator("reach"), resolve_checkpoints(run_dir), out, _settings(), launch=launch, group=group)


def test_ranks_started_with_other_arguments_stop_before_any_episode(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(EvaluationError, match="rank 1 was started with other arguments than rank 0"):
        _as_rank0_of_two(tmp_path, run_dir, _Disagreeing())
    assert not list(tmp_path.glob("*/*/episodes*.jsonl"))


class _OtherRankFailed:
    """Rank 1 passed the checks but could not take its lock (the second collective step)."""

    calls = 0

    def all_gather(self, obj: Any) -> list[Any]:
        self.calls += 1
        return [obj, "StoreError: out is in use by another vlm4vla-eval run" if self.calls == 2 else obj]


def test_a_rank_whose_check_failed_stops_every_rank(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(EvaluationError, match="rank 0 of 2 \\(torchrun\\): stopping because rank 1 failed: StoreError"):
        _as_rank0_of_two(tmp_path, run_dir, _OtherRankFailed())
    ResultsLock(tmp_path).acquire().release()  # the lock taken before the failure was released


class _EchoGroup:
    """Rank 0's view of a 2-rank group whose other rank agrees on everything."""

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj, obj]


def test_a_resumed_group_splits_what_remains_not_the_whole_plan(tmp_path: Path, run_dir: Path) -> None:
    evaluator = load_evaluator("reach")
    checkpoints = resolve_checkpoints(run_dir / "checkpoints" / "step=000100")
    out = tmp_path / "out"
    # Shard 0 of 2 of the whole plan is done: rank 0's whole-plan share is finished.
    done = run_sweep(evaluator, checkpoints, out, _settings(), launch=detect_launch({}, shard="0/2")).ran
    assert done == 6
    stored: list[dict[str, Any]] = []
    launch = Launch(rank=0, world_size=2, source="torchrun")
    with pytest.raises(EvaluationError, match="missing episodes after the run"):  # rank 1 is only imagined
        run_sweep(evaluator, checkpoints, out, _settings(), launch=launch, group=_EchoGroup(), on_record=stored.append)
    assert len(stored) == 3  # half of the 6 that remain, not the 0 left of its whole-plan share
    assert len(_records(out)) == 9


def test_two_policy_replicas_serve_the_workers_and_change_no_outcome(tmp_path: Path, run_dir: Path) -> None:
    evaluator = load_evaluator("reach")
    checkpoints = resolve_checkpoints(run_dir / "checkpoints" / "step=000100")
    run_sweep(evaluator, checkpoints, tmp_path / "one", _settings())
    used: list[int] = []

    def loader(ckpt: Any) -> Any:
        predict = load_policy(ckpt)
        replica = len(used) % 2
        used.append(replica)

        def tagged(images: Any, texts: Any) -> np.ndarray:
            calls[replica] += 1
            return predict(images, texts)

        return tagged

    calls = [0, 0]
    settings = _settings(workers=2, devices=["cpu", "cpu"])
    result = run_sweep(evaluator, checkpoints, tmp_path / "two", settings, policy_loader=loader)
    assert used == [0, 1] and min(calls) > 0, calls  # both replicas answered queries
    assert result.stats.forwards == sum(calls) and set(result.stats.batch_sizes) == {1}
    assert _records(tmp_path / "two") == _records(tmp_path / "one")


# ---------------------------------------------------------------- real torchrun
def torchrun_command(nproc: int, *args: str) -> list[str]:
    return torchrun_eval_command(nproc, args)


def launch_env() -> dict[str, str]:
    return launch_environment(PYTHONPATH=str(REPO))


@pytest.mark.slow
def test_torchrun_two_ranks_write_the_single_process_records_and_resume_after_a_killed_rank(
    tmp_path: Path, run_dir: Path
) -> None:
    args = [
        "--suite", "reach-slow", "--plugin-module", "tests.evaluation.doubles", "--ckpt", str(run_dir),
        "--modes", "full,single", "--episodes-per-task", "2", "--max-batch", "1", "--quiet", "--device", "cpu",
    ]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    expected = _records(tmp_path / "single")

    out = tmp_path / "ranks"
    proc = subprocess.Popen(
        torchrun_command(2, *args, "--out", str(out)),
        env=launch_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Kill rank 1 (its pid is in its lock file) once it has stored an episode.
    lock = out / ".vlm4vla-eval.rank1.lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("*/*/episodes.rank1.jsonl")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.kill(int(lock.read_text().split()[1]), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    partial = _records(out)
    assert 0 < len(partial) < len(expected) and not (out / "best.json").exists()
    kept = {p: p.read_bytes() for p in out.glob("*/*/episodes*.jsonl")}

    rerun = subprocess.run(
        torchrun_command(2, *args, "--out", str(out)), env=launch_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "rank 1 of 2 (torchrun): " in rerun.stdout and "rank 0 writes the reports" in rerun.stdout
    assert _records(out) == expected  # no episode lost, none stored twice, bit-identical fields
    for path, data in kept.items():  # what was done was not redone or rewritten
        assert path.read_bytes().startswith(data.rsplit(b"\n", 1)[0])
    done_before = len(partial)
    ran = [
        int(line.split(" episodes run")[0].rsplit(" ", 1)[1])
        for line in rerun.stdout.splitlines()
        if " episodes run" in line
    ]
    assert sum(ran) == len(expected) - done_before, rerun.stdout
    assert (out / "best.json").read_bytes() == (tmp_path / "single" / "best.json").read_bytes()
    assert len(list(out.rglob("best.json"))) == 1


def _free_port_in(low: int, high: int) -> int:
    for port in range(low, high):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@pytest.mark.slow
def test_srun_ranks_rendezvous_on_one_node_from_the_slurm_variables_alone(tmp_path: Path, run_dir: Path) -> None:
    """What ``srun --ntasks-per-node=2 vlm4vla-eval …`` starts (scripts/slurm/eval-one-node.sbatch):
    two processes that only have SLURM's variables, no MASTER_ADDR/PORT."""
    port = _free_port_in(15000, 25000)
    args = [
        str(Path(sys.executable).with_name("vlm4vla-eval")), "--suite", "reach", "--plugin-module", "tests.evaluation.doubles",
        "--ckpt", str(run_dir / "checkpoints" / "step=000100"), "--modes", "full", "--episodes-per-task", "3",
        "--max-batch", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_NNODES": "1",
        "SLURM_JOB_ID": f"9{port - 15000:04d}",
    }
    procs = [
        subprocess.Popen(
            args,
            env={**launch_env(), **slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    assert "rank 1 of 2 (slurm)" in outputs[1][0] and "reports in" in outputs[0][0]
    assert main([*args[1:-1], str(tmp_path / "single")]) == 0
    assert _records(tmp_path / "out") == _records(tmp_path / "single")
    assert {p.name for p in (tmp_path / "out").glob("*/full/episodes*.jsonl")} == {
        "episodes.jsonl",
        "episodes.rank1.jsonl",
    }

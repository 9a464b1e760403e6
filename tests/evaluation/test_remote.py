"""``vlm4vla-eval --policy-server`` / ``--serve`` (issue 16): the sweep through policy servers stores
exactly the in-process run's records (the oracle), imports no torch, survives a server restart
mid-sweep, and refuses inconsistent servers with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vlm4vla.cli.evaluate import main
from vlm4vla.evaluation.sweep import load_policy, resolve_checkpoints
from vlm4vla.evaluation.testing import HUB_OFFLINE, ServedBundle, stored_records, write_tiny_bundle
from vlm4vla.serving.metadata import bundle_metadata
from vlm4vla.serving.server import PolicyServer

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--episodes-per-task", "2", "--modes", "full,single", "--quiet"]

# The harness under --policy-server, in a fresh interpreter where importing torch fails.
NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("torch", "transformers", "lightning", "peft"):
                raise ImportError(f"{name} imported by the evaluation harness")

    sys.meta_path.insert(0, NoTorch())
    from vlm4vla.cli.evaluate import main
    code = main(sys.argv[1:])
    assert "torch" not in sys.modules
    sys.exit(code)
    """
)


def _wait_for_first_record(out: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.stat().st_size for p in out.glob("*/*/episodes.jsonl")):
        assert time.monotonic() < deadline and proc.poll() is None, "the sweep ended or stalled before its first record"
        time.sleep(0.02)


def _harness(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **HUB_OFFLINE, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", NO_TORCH, "--plugin-module", "tests.evaluation.doubles", *args]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def in_process(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oracle: the same sweep with the bundles loaded in process (one worker, batches of one)."""
    out = tmp_path_factory.mktemp("in_process")
    ckpt = run_dir / "checkpoints" / "step=000100"
    assert main(["--suite", "reach", "--ckpt", str(ckpt), "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture(scope="module")
def in_process_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oracle of a sweep over both checkpoints of the run directory."""
    out = tmp_path_factory.mktemp("in_process_run")
    assert main(["--suite", "reach", "--ckpt", str(run_dir), "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture(scope="module")
def server(run_dir: Path):
    with ServedBundle(run_dir / "checkpoints" / "step=000100", "--max-batch", "1") as served:
        yield served


def test_a_sweep_through_a_server_stores_the_in_process_records_without_importing_torch(
    server: ServedBundle, in_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "remote"
    _harness("--suite", "reach", "--policy-server", server.url, "--out", str(out), *SMALL)
    assert stored_records(out) == stored_records(in_process)
    assert len(stored_records(out)) == 2 * 2 * 2
    for cell in ("step=000100/full", "step=000100/single"):  # same recorded settings: resumable either way
        assert (out / cell / "meta.json").read_text() == (in_process / cell / "meta.json").read_text()
    assert (out / "best.json").read_bytes() == (in_process / "best.json").read_bytes()
    # ... and two env workers through the same server (one request of both observations)
    out2 = tmp_path / "remote_workers"
    _harness("--suite", "reach", "--policy-server", server.url, "--out", str(out2), "--workers", "2", *SMALL)
    assert stored_records(out2) == stored_records(in_process)


def test_killed_and_restarted_server_mid_sweep_nothing_lost_or_stored_twice(
    server: ServedBundle, in_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "restart"
    env = {**os.environ, **HUB_OFFLINE, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["--plugin-module", "tests.evaluation.doubles", "--suite", "reach-slow", "--policy-server", server.url]
    args += ["--out", str(out), "--server-retry", "120", *SMALL]
    proc = subprocess.Popen([sys.executable, "-c", NO_TORCH, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_first_record(out, proc)
        starts = server.starts
        server.kill()  # SIGKILL while the sweep is running
        assert len(stored_records(out)) < 8
        time.sleep(1.0)
        server.start()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert server.starts == starts + 1
    finally:
        proc.kill()
        proc.wait()
    expected = {k: {**v, "suite": "reach"} for k, v in stored_records(in_process).items()}
    assert {k: {**v, "suite": "reach"} for k, v in stored_records(out).items()} == expected


def test_a_server_that_does_not_come_back_stops_the_sweep_and_a_rerun_resumes(
    run_dir: Path, in_process: Path, tmp_path: Path
) -> None:
    ckpt = run_dir / "checkpoints" / "step=000100"
    out = tmp_path / "resume"
    env = {**os.environ, **HUB_OFFLINE, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    served = _thread_server(ckpt)
    try:
        args = ["--suite", "reach-slow", "--policy-server", served.url, "--out", str(out), "--server-retry", "1"]
        argv = [sys.executable, "-c", NO_TORCH, "--plugin-module", "tests.evaluation.doubles", *args, *SMALL]
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_first_record(out, proc)
            served.shutdown()  # gone for good (for longer than --server-retry)
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{served.url}: no policy server reachable" in err
        partial = stored_records(out)
        assert 0 < len(partial) < 8 and not (out / "best.json").exists()
        served = _thread_server(ckpt, port=served.port)
        rerun = _harness(*args, *[a for a in SMALL if a != "--quiet"])
        assert f"{8 - len(partial)} episodes run, {len(partial)} already done" in rerun.stdout
    finally:
        served.shutdown()
    expected = {k: {**v, "suite": "reach"} for k, v in stored_records(in_process).items()}
    assert {k: {**v, "suite": "reach"} for k, v in stored_records(out).items()} == expected


def _thread_server(bundle: Path, port: int = 0) -> PolicyServer:
    """The real server in a thread of this process (its policy loaded here: no 10 s start-up)."""
    (ckpt,) = resolve_checkpoints(bundle)
    meta = bundle_metadata(ckpt.name, ckpt.path, ckpt.step, ckpt.config, device="cpu", dtype="float32")
    return PolicyServer(load_policy(ckpt), meta, port=port, max_batch=1).start_in_thread()


def test_servers_of_one_bundle_are_replicas_and_of_several_the_checkpoints_of_the_sweep(
    run_dir: Path, in_process_run: Path, tmp_path: Path
) -> None:
    bundles = [run_dir / "checkpoints" / "step=000100", run_dir / "checkpoints" / "step=000200"]
    servers = [_thread_server(bundles[1]), _thread_server(bundles[0]), _thread_server(bundles[0])]
    try:
        out = tmp_path / "sweep"
        urls = ",".join(s.url for s in servers)
        assert main(["--suite", "reach", "--policy-server", urls, "--out", str(out), "--workers", "2", *SMALL]) == 0
        assert stored_records(out) == stored_records(in_process_run)  # both checkpoints, in step order
        assert json.loads((out / "best.json").read_text()) == json.loads((in_process_run / "best.json").read_text())
        assert servers[1].stats.forwards > 0 and servers[2].stats.forwards > 0  # the two replicas both served
    finally:
        for s in servers:
            s.shutdown()


def test_serve_starts_one_server_per_checkpoint_and_stops_them(
    run_dir: Path, in_process_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "served"
    assert (
        main(["--suite", "reach", "--ckpt", str(run_dir), "--serve", "--device", "cpu", "--out", str(out), *SMALL]) == 0
    )
    assert stored_records(out) == stored_records(in_process_run)
    leftover = subprocess.run(["pgrep", "-f", "--", "ready-file .*vlm4vla-serve-"], capture_output=True, text=True)
    assert leftover.returncode == 1, f"a --serve server outlived the sweep: {leftover.stdout}{leftover.stderr}"


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_inconsistent_servers_and_arguments_are_refused_with_one_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = run_dir / "checkpoints" / "step=000100"
    impostor = write_tiny_bundle(tmp_path / "other" / "step=000100", seed=7, gripper="signed")
    servers = [_thread_server(bundle), _thread_server(impostor)]
    out = str(tmp_path / "out")
    try:
        url = servers[0].url
        err = _one_line_error(capsys, ["--suite", "reach-8d", "--policy-server", url, "--out", out])
        assert "8-d actions" in err and "step=000100" in err
        err = _one_line_error(capsys, ["--suite", "reach", "--policy-server", f"{url},{servers[1].url}", "--out", out])
        assert "both serve a checkpoint named 'step=000100' but different bundles" in err
        err = _one_line_error(capsys, ["--suite", "reach", "--policy-server", url, "--dtype", "bfloat16", "--out", out])
        assert "the server runs the policy in float32" in err
        err = _one_line_error(capsys, ["--suite", "reach", "--policy-server", url, "--ckpt", str(bundle)])
        assert "one of --ckpt or --policy-server" in err
        err = _one_line_error(capsys, ["--suite", "reach", "--policy-server", "http://x:1", "--out", out])
        assert "expected ws://HOST:PORT" in err
        crashing = f"{sys.executable} -c 'import sys; print(\"no GPU here\"); sys.exit(3)'"
        err = _one_line_error(
            capsys, ["--suite", "reach", "--ckpt", str(bundle), "--serve", "--serve-command", crashing, "--out", out]
        )
        assert f"vlm4vla serve {bundle}" in err and "exited with code 3: no GPU here" in err
        port = servers[0].port
        servers[0].shutdown()
        time.sleep(0.2)
        start = time.monotonic()
        err = _one_line_error(
            capsys,
            ["--suite", "reach", "--policy-server", f"ws://127.0.0.1:{port}", "--server-retry", "0.5", "--out", out],
        )
        assert "no policy server reachable" in err and time.monotonic() - start < 10
        assert not Path(out).exists() or not list(Path(out).glob("*/*/episodes.jsonl"))
    finally:
        for s in servers:
            s.shutdown()


def test_a_server_restarted_with_another_bundle_stops_the_sweep(run_dir: Path, tmp_path: Path) -> None:
    from vlm4vla.evaluation.remote import RemotePolicyError, connect, remote_predict

    first = _thread_server(run_dir / "checkpoints" / "step=000100")
    port = first.port
    client = connect(first.url, token=None, connect_timeout=10, retry_seconds=10)
    predict = remote_predict(client)
    first.shutdown()
    time.sleep(0.3)
    impostor = write_tiny_bundle(tmp_path / "impostor" / "step=000100", seed=9, gripper="signed")
    (ckpt,) = resolve_checkpoints(impostor)
    meta = bundle_metadata(ckpt.name, ckpt.path, ckpt.step, ckpt.config, device="cpu", dtype="float32")
    second = PolicyServer(load_policy(ckpt), meta, port=port, max_batch=1).start_in_thread()
    try:
        import numpy as np

        with pytest.raises(RemotePolicyError, match="now serves checkpoint 'step=000100'"):
            predict([np.zeros((8, 8, 3), np.uint8)], ["reach left"])
    finally:
        second.shutdown()


@pytest.mark.skipif(
    not os.environ.get("VLM4VLA_HARNESS_PYTHON"),
    reason="needs a Python environment without torch (VLM4VLA_HARNESS_PYTHON; `make test-client` builds one)",
)
def test_the_harness_runs_in_a_torch_free_environment(server: ServedBundle, in_process: Path, tmp_path: Path) -> None:
    """vlm4vla-client[harness] + vlm4vla --no-deps, no torch installed at all: a full sweep."""
    python = os.environ["VLM4VLA_HARNESS_PYTHON"]
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    out = tmp_path / "torch_free"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = [python, "-m", "vlm4vla.cli.evaluate", "--plugin-module", "tests.evaluation.doubles", "--suite", "reach"]
    result = subprocess.run(
        [*argv, "--policy-server", server.url, "--out", str(out), *SMALL], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert stored_records(out) == stored_records(in_process)
    # torchrun ranks need torch.distributed: one line pointing at --shard, not a traceback
    ranks = {**env, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    result = subprocess.run(
        [*argv, "--policy-server", server.url, "--out", str(tmp_path / "ranks"), *SMALL],
        env=ranks,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "torch is not installed here; run independent shards instead (--shard" in result.stderr


def test_replicas_are_matched_on_the_policy_not_on_where_it_runs(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    from vlm4vla.evaluation.remote import RemotePolicyError, connect_servers

    bundle = run_dir / "checkpoints" / "step=000100"
    copy = tmp_path / "node2" / "step=000100"  # the same bundle copied to another host's disk
    shutil.copytree(bundle, copy)
    servers = []
    for path, device, batch in ((bundle, "cuda:0", 1), (copy, "cuda:1", 8)):
        (ckpt,) = resolve_checkpoints(path)
        meta = bundle_metadata(ckpt.name, ckpt.path, ckpt.step, ckpt.config, device=device, dtype="bfloat16")
        servers.append(PolicyServer(lambda i, t: None, meta, port=0, max_batch=batch).start_in_thread())
    bare = PolicyServer(lambda i, t: None, {"checkpoint": "x"}, port=0).start_in_thread()
    try:
        remote = connect_servers([s.url for s in servers], connect_timeout=5)
        assert [c.name for c in remote.checkpoints] == ["step=000100"]
        assert len(remote.clients["step=000100"]) == 2 and (remote.device, remote.dtype) == ("cuda", "bfloat16")
        remote.close()
        with pytest.raises(RemotePolicyError, match="metadata has no path, config; is it vlm4vla serve"):
            connect_servers([bare.url], connect_timeout=5)
    finally:
        for s in [*servers, bare]:
            s.shutdown()

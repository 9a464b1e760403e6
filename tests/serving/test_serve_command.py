"""``vlm4vla serve`` as a subprocess: the metadata is the bundle's, the actions are bit-identical to
in-process ``predict_chunk``, bad input is one line, and a server killed during a forward is either
waited for (restarted in time: the client resends) or reported (not restarted)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from vlm4vla_client import PolicyServerClient, ServerUnavailableError

from vlm4vla.evaluation.sweep import load_policy, resolve_checkpoints
from vlm4vla.evaluation.testing import HUB_OFFLINE, ServedBundle, free_port, write_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("serve") / "step=000040", gripper="signed", chunk_size=4)


def test_metadata_is_the_bundles_identity_and_actions_match_in_process_bit_for_bit(bundle: Path) -> None:
    config = json.loads((bundle / "vla_config.json").read_text())
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    texts = ["put the bowl on the plate", "open the drawer", "put the bowl on the plate"]
    local = load_policy(resolve_checkpoints(bundle)[0])
    expected = np.concatenate([local([im], [t]) for im, t in zip(images, texts, strict=True)])
    with ServedBundle(bundle, "--max-batch", "1") as server, PolicyServerClient(server.url) as client:
        meta = client.metadata
        got = client.predict(images, texts)
    assert (meta["checkpoint"], meta["step"], meta["chunk_size"], meta["action_dim"]) == ("step=000040", 40, 4, 7)
    assert meta["config"] == config and meta["gripper"] == {"kind": "signed", "threshold": 0.5}
    assert meta["path"] == str(bundle.resolve()) and (meta["device"], meta["dtype"]) == ("cpu", "float32")
    assert (
        meta["normalizer_hash"] == hashlib.sha256(json.dumps(config["normalizer"], sort_keys=True).encode()).hexdigest()
    )
    assert meta["weights_sha256"] == hashlib.sha256((bundle / "model.safetensors").read_bytes()).hexdigest()
    assert got.shape == (3, 4, 7)
    np.testing.assert_array_equal(got, expected)


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vlm4vla.cli.main", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, **HUB_OFFLINE},
    )


def test_bad_input_is_one_line_and_an_existing_ready_file_is_left_alone(bundle: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    ready.write_text("someone else's")
    result = _serve(str(bundle), "--port", "0", "--ready-file", str(ready))
    assert result.returncode == 2 and "--ready-file" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert ready.read_text() == "someone else's"
    run = tmp_path / "run" / "checkpoints"
    for step in (1, 2):
        write_tiny_bundle(run / f"step={step:06d}", gripper="signed")
    result = _serve(str(run.parent), "--port", "0")
    assert result.returncode == 2 and "2 bundles; a server serves one" in result.stderr
    result = _serve(str(tmp_path / "missing"))
    assert result.returncode == 2 and "no such policy bundle" in result.stderr
    result = _serve(str(bundle), "--device", "cpu,cpu")
    assert result.returncode == 2 and "a server runs one replica; start one server per device" in result.stderr


def test_a_non_loopback_host_warns_and_sigterm_stops_cleanly(bundle: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vlm4vla.cli.main", "serve", str(bundle), "--host", "0.0.0.0", "--port", "0",
             "--ready-file", str(ready), "--device", "cpu"],
            stderr=out, env={**__import__("os").environ, **HUB_OFFLINE},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        port = json.loads(ready.read_text())["port"]
        with PolicyServerClient(f"ws://127.0.0.1:{port}") as client:
            assert client.metadata["checkpoint"] == "step=000040"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    text = log.read_text()
    assert "warning: listening on 0.0.0.0, reachable from other machines" in text
    assert not ready.exists()  # removed on exit: a stale file never points at a dead server


SLOW_SERVER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from pathlib import Path
    from vlm4vla.serving.server import PolicyServer

    def predict(images, texts):
        Path(sys.argv[2]).touch()          # "the forward has started"
        time.sleep(float(sys.argv[3]))
        return np.full((len(images), 2, 7), 0.25, np.float32)

    PolicyServer(predict, {"checkpoint": "slow"}, port=int(sys.argv[1]), max_batch=1).serve_forever()
    """
)


def _slow_server(port: int, marker: Path, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(port), str(marker), str(seconds)])


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_server_killed_during_a_forward_is_waited_for_when_restarted_and_reported_when_not(tmp_path: Path) -> None:
    port = free_port()
    image = [np.zeros((8, 8, 3), np.uint8)]
    first = _slow_server(port, tmp_path / "forward1", 30.0)
    client = PolicyServerClient(f"ws://127.0.0.1:{port}", connect_timeout=60, retry_seconds=60)
    replacement: list[subprocess.Popen[bytes]] = []

    def crash_then_restart() -> None:
        _wait_for(tmp_path / "forward1")
        first.kill()  # SIGKILL in the middle of the 30 s forward
        first.wait()
        time.sleep(0.5)
        replacement.append(_slow_server(port, tmp_path / "forward2", 0.0))

    thread = threading.Thread(target=crash_then_restart)
    thread.start()
    try:
        start = time.monotonic()
        actions = client.predict(image, ["go"])  # resent to the restarted server
        assert time.monotonic() - start < 25  # not the killed 30 s forward
        np.testing.assert_array_equal(actions, np.full((1, 2, 7), 0.25, np.float32))
        assert client.reconnects == 1 and (tmp_path / "forward2").exists()
        thread.join()
        client.retry_seconds = 1.0
        (tmp_path / "forward2").unlink()
        replacement[0].kill()  # killed again, and this time nobody restarts it
        replacement[0].wait()
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="no policy server reachable"):
            client.predict(image, ["go"])
        assert time.monotonic() - start < 10
    finally:
        thread.join()
        for proc in [first, *replacement]:
            proc.kill()
            proc.wait()

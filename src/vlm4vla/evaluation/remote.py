"""Evaluation against policy servers (``vlm4vla-eval --policy-server`` / ``--serve``).

The sweep is the same as in process; only where the policy runs changes. A server's metadata
message stands in for the bundle's files: its ``config`` is the bundle's ``vla_config.json``, so
the suite checks it exactly as `vlm4vla.evaluation.sweep.resolve_checkpoints` would, and the
results directory, records and ``meta.json`` are those of an in-process run (device and dtype
are the server's). Several servers of the same bundle are replicas; of different bundles, the
checkpoints of one sweep. ``--serve`` starts ``vlm4vla serve`` for each checkpoint in turn.

Nothing here imports torch: the harness can run in a simulator's environment with only
``vlm4vla-client`` and the harness's light dependencies installed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm4vla.evaluation.plugin import EvaluationError
from vlm4vla.evaluation.runner import PredictFn
from vlm4vla.evaluation.sweep import Checkpoint


class RemotePolicyError(EvaluationError):
    """A policy server that cannot be used for this sweep (unreachable, refused, inconsistent)."""


def _client_errors() -> tuple[type[BaseException], ...]:
    from vlm4vla_client import PolicyServerError

    return (PolicyServerError, ValueError)


def parse_server_urls(text: str) -> list[str]:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    bad = [u for u in urls if not u.startswith(("ws://", "wss://"))]
    if not urls or bad:
        raise RemotePolicyError(f"--policy-server {text!r}: expected ws://HOST:PORT[,ws://HOST:PORT...]")
    return urls


def connect(url: str, *, token: str | None, connect_timeout: float, retry_seconds: float) -> Any:
    from vlm4vla_client import PolicyServerClient

    try:
        return PolicyServerClient(url, token=token, connect_timeout=connect_timeout, retry_seconds=retry_seconds)
    except _client_errors() as err:
        raise RemotePolicyError(str(err)) from None


def checkpoint_of(metadata: Mapping[str, Any], url: str) -> Checkpoint:
    """The sweep's view of a served bundle (its name, step and ``vla_config.json``), checked as a
    bundle's files are."""
    from vlm4vla.policy.bundle import BundleError, validate_bundle_config

    missing = [k for k in ("checkpoint", "path", "config") if k not in metadata]
    if missing:
        raise RemotePolicyError(f"{url}: the server's metadata has no {', '.join(missing)}; is it vlm4vla serve?")
    step = metadata.get("step")
    if step is not None and not isinstance(step, int):
        raise RemotePolicyError(f"{url}: metadata step {step!r}: expected an int or null")
    try:
        config = validate_bundle_config(metadata["config"], f"{url} metadata 'config' (vla_config.json)")
    except BundleError as err:
        raise RemotePolicyError(str(err)) from None
    return Checkpoint(str(metadata["checkpoint"]), Path(str(metadata["path"])), step, config)


def remote_predict(client: Any) -> PredictFn:
    """A predict function over one connection; a server failure becomes one `RemotePolicyError` line."""
    errors = _client_errors()

    def predict(images: Sequence[Any], instructions: Sequence[str]) -> Any:
        try:
            return client.predict(list(images), list(instructions))
        except errors as err:
            raise RemotePolicyError(str(err)) from None

    return predict


@dataclass
class RemotePolicies:
    """The checkpoints served by a list of servers, and the connections (replicas) of each."""

    checkpoints: list[Checkpoint]
    clients: dict[str, list[Any]] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"

    def loader(self, checkpoint: Checkpoint) -> list[PredictFn]:
        return [remote_predict(c) for c in self.clients[checkpoint.name]]

    def close(self) -> None:
        for clients in self.clients.values():
            for client in clients:
                client.close()


def connect_servers(
    urls: Sequence[str], *, token: str | None = None, connect_timeout: float = 60.0, retry_seconds: float = 60.0
) -> RemotePolicies:
    """Connect to every server and group them by the bundle they serve (ordered by step)."""
    from vlm4vla_client import metadata_identity

    from vlm4vla.evaluation.devices import device_type

    opened: list[Any] = []  # every connection, closed if any check fails
    clients: dict[str, list[Any]] = {}
    identities: dict[str, tuple[str, str]] = {}
    checkpoints: dict[str, Checkpoint] = {}
    settings: set[tuple[str, str]] = set()
    try:
        for url in urls:
            client = connect(url, token=token, connect_timeout=connect_timeout, retry_seconds=retry_seconds)
            opened.append(client)
            meta = client.metadata
            ckpt = checkpoint_of(meta, url)
            identity = metadata_identity(meta)
            if ckpt.name in identities and identities[ckpt.name][0] != identity:
                raise RemotePolicyError(
                    f"{url} and {identities[ckpt.name][1]} both serve a checkpoint named {ckpt.name!r} but different "
                    "bundles (weights, config or settings differ); serve each checkpoint under its own name"
                )
            identities.setdefault(ckpt.name, (identity, url))
            checkpoints.setdefault(ckpt.name, ckpt)
            clients.setdefault(ckpt.name, []).append(client)
            settings.add((device_type(str(meta.get("device", "cpu"))), str(meta.get("dtype", "float32"))))
        if len(settings) > 1:
            raise RemotePolicyError(
                f"the servers run on different devices or dtypes ({sorted(settings)}); a sweep records one of each"
            )
    except BaseException:
        for client in opened:
            client.close()
        raise
    ordered = sorted(checkpoints.values(), key=lambda c: (c.step is None, c.step or 0, c.name))
    device, dtype = next(iter(settings))
    return RemotePolicies(ordered, clients, device=device, dtype=dtype)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM (a server closes its connections and exits), SIGKILL if it has not within ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_listening(
    proc: subprocess.Popen[Any], ready: Path, *, what: str, timeout: float, log: Path | None = None
) -> dict[str, Any]:
    """The ``--ready-file`` JSON of a starting ``vlm4vla serve`` (``{"url", "port", ...}``), once it
    listens. `RemotePolicyError` if it exits first (with ``log``'s last line) or is not listening
    within ``timeout`` (it is then stopped)."""
    deadline = time.monotonic() + timeout
    while not ready.is_file():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines() if log is not None and log.is_file() else []
            raise RemotePolicyError(f"{what} exited with code {proc.returncode}: {tail[-1] if tail else 'no output'}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RemotePolicyError(f"{what}: not listening after {timeout:.0f} s")
        time.sleep(0.05)
    return json.loads(ready.read_text())


class ServedCheckpoints:
    """``--serve``: one ``vlm4vla serve`` process per checkpoint, started when the sweep reaches it
    (the previous one is stopped first, so one bundle is in GPU memory at a time)."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        device: str = "auto",
        dtype: str = "float32",
        max_batch: int | None = None,
        token: str | None = None,
        start_timeout: float = 600.0,
        retry_seconds: float = 60.0,
    ) -> None:
        self.command = list(command) if command else [sys.executable, "-m", "vlm4vla.cli.main", "serve"]
        self.device = device
        self.dtype = dtype
        self.max_batch = max_batch
        self.token = token
        self.start_timeout = start_timeout
        self.retry_seconds = retry_seconds
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None
        self._running: str | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="vlm4vla-serve-"))
        self.started: list[str] = []

    def loader(self, checkpoint: Checkpoint) -> list[PredictFn]:
        if self._running != checkpoint.name:
            self.start(checkpoint)
        return [remote_predict(self._client)]

    def start(self, checkpoint: Checkpoint) -> str:
        """Start the server of ``checkpoint`` (stopping the previous one); returns its device."""
        self.stop()
        ready = self._dir / f"{len(self.started)}.json"
        log_path = self._dir / f"{len(self.started)}.log"
        argv = [*self.command, str(checkpoint.path), "--port", "0", "--ready-file", str(ready)]
        argv += ["--device", self.device, "--dtype", self.dtype]
        if self.max_batch is not None:
            argv += ["--max-batch", str(self.max_batch)]
        env = dict(os.environ)
        if self.token:
            env["VLM4VLA_SERVER_TOKEN"] = self.token
        with open(log_path, "wb") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.started.append(checkpoint.name)
        what = f"vlm4vla serve {checkpoint.path} (command: {shlex.join(argv)})"
        url = wait_until_listening(self._proc, ready, what=what, timeout=self.start_timeout, log=log_path)["url"]
        self._client = connect(url, token=self.token, connect_timeout=30.0, retry_seconds=self.retry_seconds)
        served = self._client.metadata
        if served.get("config") != dict(checkpoint.config):
            self.stop()
            raise RemotePolicyError(f"{url}: serves another vla_config.json than {checkpoint.path}")
        self._running = checkpoint.name
        return str(served.get("device", "cpu"))

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        self._running = None

    def __enter__(self) -> ServedCheckpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)

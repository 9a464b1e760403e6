"""Env workers and the batched policy loop.

Every env lives in a worker that owns it for the whole episode (with ``workers > 1`` a separate
``spawn``-ed process each; with one worker the env runs in the calling process). A worker runs
the plugin's ``run_episode``; each time its `PolicyClient` needs a chunk it sends the
observation to the main process, which gathers the requests of all waiting workers into one
``predict_chunk`` call and sends each worker its chunk back.

The unit of work is a `Unit`: one episode with a fresh env (seed derived from the episode, cleared
action queue), or — for a protocol that shares an env between episodes (`Evaluator.env_group`) —
a group of episodes run back to back in one env, in protocol order, in one worker. Either way an
episode's outcome does not depend on which worker ran it or on the number of workers. A group
resumed after an interruption replays its finished episodes (``Job.replay``: run, not stored) so
that the shared env reaches the later ones in the state it would have had.
Batched forwards are not bit-identical to single-sample ones on every backend (CPU GEMMs block
by batch size: differences around 1e-7); ``max_batch=1`` makes every query a batch of one.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlm4vla.errors import ConfigError
from vlm4vla.evaluation.chunking import steps_per_query
from vlm4vla.evaluation.client import PolicyClient
from vlm4vla.evaluation.plugin import EvaluationError, Evaluator, SimulatorImportError

PredictFn = Callable[[Sequence[np.ndarray], Sequence[str]], np.ndarray]
"""(images, instructions) → (B, N, action_dim) actions."""

HARNESS_FIELDS = (
    "suite", "protocol", "task", "episode_id", "checkpoint", "step", "mode", "chunk_size", "steps_per_query",
    "policy_queries", "seed", "max_steps", "seconds",
)  # fmt: skip


def episode_seed(seed: int, task: str, episode_id: Any) -> int:
    """Seed of one episode: the same for every checkpoint, mode and worker."""
    return zlib.crc32(f"{seed}/{task}/{episode_id}".encode()) & 0x7FFFFFFF


@dataclass
class Job:
    """One episode to run for one (checkpoint, mode) cell."""

    spec: dict[str, Any]
    task: str
    episode_id: Any
    checkpoint: str
    step: int | None
    mode: str
    chunk_size: int
    seed: int
    max_steps: int | None = None
    video_path: str | None = None
    protocol: str = "standard"
    replay: bool = False
    """Run only to bring a shared env to the state of the next episode; its record is not stored."""


@dataclass
class Unit:
    """Episodes one worker runs back to back: a single job with its own env (``shared_env=False``),
    or a group sharing one env, built for the first and `Evaluator.reuse_env`-ed for the others."""

    jobs: list[Job]
    shared_env: bool = False

    @property
    def pending(self) -> bool:
        """Whether any of its episodes is still to be stored (not only replays)."""
        return any(not job.replay for job in self.jobs)


@dataclass
class RunStats:
    """Counters of the policy loop (for reports and the overhead benchmark)."""

    episodes: int = 0
    env_steps: int = 0
    forwards: int = 0
    samples: int = 0
    policy_seconds: float = 0.0
    wall_seconds: float = 0.0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def add_forward(self, batch: int, seconds: float) -> None:
        self.forwards += 1
        self.samples += batch
        self.policy_seconds += seconds
        self.batch_sizes[batch] = self.batch_sizes.get(batch, 0) + 1


def _rollout(
    evaluator: Evaluator, job: Job, env: Any, query: Callable[[np.ndarray, str], np.ndarray], start: float
) -> dict[str, Any]:
    """One episode in ``env`` through a fresh `PolicyClient`, as a flat record."""
    client = PolicyClient(query, mode=job.mode, chunk_size=job.chunk_size, record_frames=job.video_path is not None)
    client.reset()
    result = evaluator.run_episode(env, client, job.spec, max_steps=job.max_steps)
    seconds = time.perf_counter() - start
    if not isinstance(result, Mapping) or "success" not in result or "steps" not in result:
        raise EvaluationError(
            f"suite {evaluator.name!r}: run_episode must return a dict with 'success' and 'steps', got {result!r}"
        )
    if job.video_path is not None and client.frames and not job.replay:
        from vlm4vla.evaluation.report import write_video

        write_video(client.frames, job.video_path)
    record = {k: v for k, v in result.items() if k not in HARNESS_FIELDS}
    record.update(
        suite=evaluator.name,
        protocol=job.protocol,
        task=job.task,
        episode_id=job.episode_id,
        checkpoint=job.checkpoint,
        step=job.step,
        mode=job.mode,
        chunk_size=job.chunk_size,
        steps_per_query=steps_per_query(job.mode, job.chunk_size),
        policy_queries=client.queries,
        seed=job.seed,
        max_steps=job.max_steps,
        seconds=round(seconds, 4),
    )
    if job.video_path is not None and client.frames:
        record["video"] = os.path.relpath(job.video_path, Path(job.video_path).parents[2])
    record["success"] = bool(record["success"])
    record["steps"] = int(record["steps"])
    return record


def execute_job(evaluator: Evaluator, job: Job, query: Callable[[np.ndarray, str], np.ndarray]) -> dict[str, Any]:
    """Run one episode in this process: fresh env, cleared queue, plugin rollout, flat record."""
    start = time.perf_counter()
    env = evaluator.make_env(job.spec, seed=job.seed)
    try:
        return _rollout(evaluator, job, env, query, start)
    finally:
        evaluator.close_env(env)


Emit = Callable[[int, dict[str, Any]], None]
"""(index of the job in its unit, record) for every job of a unit that is not a replay."""


def execute_unit(evaluator: Evaluator, unit: Unit, query: Callable[[np.ndarray, str], np.ndarray], emit: Emit) -> None:
    """Run a unit's episodes in order in this process, emitting each stored record as it finishes."""
    if not unit.shared_env:
        for index, job in enumerate(unit.jobs):
            emit(index, execute_job(evaluator, job, query))
        return
    env: Any = None
    try:
        for index, job in enumerate(unit.jobs):
            start = time.perf_counter()
            env = evaluator.make_env(job.spec, seed=job.seed) if env is None else evaluator.reuse_env(env, job.spec)
            record = _rollout(evaluator, job, env, query, start)
            if not job.replay:
                emit(index, record)
    finally:
        if env is not None:
            evaluator.close_env(env)


def _timed_predict(
    predict: PredictFn, stats: RunStats, images: Sequence[np.ndarray], texts: Sequence[str]
) -> np.ndarray:
    start = time.perf_counter()
    out = np.asarray(predict(images, texts), dtype=np.float32)
    stats.add_forward(len(images), time.perf_counter() - start)
    if out.ndim != 3 or out.shape[0] != len(images):
        raise EvaluationError(f"policy returned actions of shape {out.shape}; expected ({len(images)}, N, D)")
    return out


OnRecord = Callable[[Job, dict[str, Any]], None]


class InlinePool:
    """One worker: the env runs in this process, queries are batches of one."""

    workers = 1

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def run(
        self, units: Sequence[Unit], predict: PredictFn | Sequence[PredictFn], on_record: OnRecord, stats: RunStats
    ) -> None:
        start = time.perf_counter()
        if isinstance(predict, Sequence):  # one env at a time: one replica is all it can use
            predict = predict[0]

        def query(image: np.ndarray, text: str) -> np.ndarray:
            return _timed_predict(predict, stats, [image], [text])[0]

        try:
            for unit in units:

                def emit(index: int, record: dict[str, Any], unit: Unit = unit) -> None:
                    stats.episodes += 1
                    stats.env_steps += record["steps"]
                    on_record(unit.jobs[index], record)

                execute_unit(self.evaluator, unit, query, emit)
        finally:
            stats.wall_seconds += time.perf_counter() - start

    def close(self) -> None:
        pass

    def __enter__(self) -> InlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -------------------------------------------------------------------- process workers
def _get(q: Any, parent: int) -> Any:
    """Blocking get that exits the worker if its parent died (no orphaned simulators)."""
    while True:
        try:
            return q.get(timeout=1.0)
        except queue_mod.Empty:
            if os.getppid() != parent:
                os._exit(1)


def _worker_main(wid: int, evaluator: Evaluator, inbox: Any, outbox: Any) -> None:
    # Ctrl-C reaches the whole process group: the main process alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def query(image: np.ndarray, text: str) -> np.ndarray:
        inbox.put(("obs", wid, image, text))
        msg = _get(outbox, parent)
        if msg[0] != "chunk":
            os._exit(0)
        return msg[1]

    inbox.put(("ready", wid))
    while True:
        msg = _get(outbox, parent)
        if msg[0] == "stop":
            return
        unit: Unit = msg[1]
        try:
            execute_unit(evaluator, unit, query, lambda index, record: inbox.put(("done", wid, record, index)))
        except BaseException as err:  # reported to the main process, which stops the run
            inbox.put(
                ("error", wid, type(err).__name__, str(err), traceback.format_exc(), isinstance(err, ImportError))
            )
            return
        inbox.put(("unit_done", wid))


class _Replicas:
    """The policy replicas serving a `ProcessPool`.

    One replica: each batch runs in the calling thread as soon as it is formed (always idle).
    Several: one thread per replica (CUDA forwards release the GIL); a batch goes to the idle
    replica with the lowest index, whose thread sends each worker its chunk and then posts
    ``("replica_idle", r)`` to the pool's inbox, waking the main loop to form the next batch.
    """

    def __init__(self, predict: PredictFn | Sequence[PredictFn], stats: RunStats, outboxes: Any, inbox: Any) -> None:
        self.predicts = list(predict) if isinstance(predict, Sequence) else [predict]
        if not self.predicts:
            raise EvaluationError("no policy replica to serve the workers")
        self.stats = stats
        self.outboxes = outboxes
        self.inbox = inbox
        self.idle = list(range(len(self.predicts)))
        self._threads: list[threading.Thread] = []
        self._jobs: list[queue_mod.SimpleQueue[Any]] = []
        self._lock = threading.Lock()
        if len(self.predicts) > 1:
            for r in range(len(self.predicts)):
                jobs: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
                thread = threading.Thread(target=self._serve, args=(r, jobs), daemon=True, name=f"vlm4vla-replica-{r}")
                thread.start()
                self._jobs.append(jobs)
                self._threads.append(thread)

    @property
    def busy(self) -> bool:
        return len(self.idle) < len(self.predicts)

    def has_idle(self) -> bool:
        return bool(self.idle)

    def release(self, r: int) -> None:
        self.idle.append(r)
        self.idle.sort()

    def submit(self, batch: list[tuple[int, np.ndarray, str]]) -> None:
        if not self._threads:
            self._forward(0, batch)
            return
        r = self.idle.pop(0)
        self._jobs[r].put(batch)

    def _forward(self, r: int, batch: list[tuple[int, np.ndarray, str]]) -> None:
        start = time.perf_counter()
        out = np.asarray(self.predicts[r]([b[1] for b in batch], [b[2] for b in batch]), dtype=np.float32)
        seconds = time.perf_counter() - start
        with self._lock:
            self.stats.add_forward(len(batch), seconds)
        if out.ndim != 3 or out.shape[0] != len(batch):
            raise EvaluationError(f"policy returned actions of shape {out.shape}; expected ({len(batch)}, N, D)")
        for (w, _, _), chunk in zip(batch, out, strict=True):
            self.outboxes[w].put(("chunk", chunk))

    def _serve(self, r: int, jobs: queue_mod.SimpleQueue[Any]) -> None:
        while True:
            batch = jobs.get()
            if batch is None:
                return
            try:
                self._forward(r, batch)
            except BaseException as err:  # the main loop raises it
                text = str(err) if isinstance(err, EvaluationError) else f"{type(err).__name__}: {err}"
                self.inbox.put(("replica_error", r, text, traceback.format_exc()))
                return
            self.inbox.put(("replica_idle", r))

    def close(self) -> None:
        for jobs in self._jobs:
            jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5.0)


class ProcessPool:
    """``workers`` spawned processes, each owning its env; batched queries in the calling process."""

    def __init__(self, evaluator: Evaluator, workers: int, *, max_batch: int | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"workers: must be ≥ 1, got {workers}")
        self.evaluator = evaluator
        self.workers = workers
        self.max_batch = max_batch or workers
        ctx = mp.get_context("spawn")
        self._inbox = ctx.Queue()
        self._outboxes = [ctx.Queue() for _ in range(workers)]
        self._procs = [
            ctx.Process(
                target=_worker_main,
                args=(w, evaluator, self._inbox, self._outboxes[w]),
                daemon=True,
                name=f"vlm4vla-eval-{w}",
            )
            for w in range(workers)
        ]
        for proc in self._procs:
            proc.start()
        self._ready: set[int] = set()

    def _receive(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            try:
                return self._inbox.get(timeout=wait)
            except queue_mod.Empty:
                dead = [(w, p.exitcode) for w, p in enumerate(self._procs) if p.exitcode is not None]
                if dead:
                    w, code = dead[0]
                    raise EvaluationError(f"evaluation worker {w} died unexpectedly (exit code {code})") from None
                if deadline is not None and time.monotonic() >= deadline:
                    return None

    def _wait_ready(self) -> None:
        while len(self._ready) < self.workers:
            msg = self._receive(None)
            if msg[0] == "ready":
                self._ready.add(msg[1])
            elif msg[0] == "error":
                raise SimulatorImportError(msg[3]) if msg[5] else EvaluationError(f"{msg[2]}: {msg[3]}")

    def run(
        self, units: Sequence[Unit], predict: PredictFn | Sequence[PredictFn], on_record: OnRecord, stats: RunStats
    ) -> None:
        """Run ``units`` on the workers. ``predict`` may be a list of replicas (one per GPU): each
        batch then goes to an idle replica, in its own thread, so the replicas run concurrently."""
        self._wait_ready()  # process start-up is not part of the measured run
        replicas = _Replicas(predict, stats, self._outboxes, self._inbox)
        start = time.perf_counter()
        pending = deque(units)
        running: dict[int, Unit] = {}
        waiting: list[tuple[int, np.ndarray, str]] = []
        idle = deque(sorted(self._ready))

        def dispatch() -> None:
            while idle and pending:
                w = idle.popleft()
                running[w] = pending.popleft()
                self._outboxes[w].put(("job", running[w]))

        try:
            dispatch()
            while pending or running or replicas.busy:
                msgs = [self._receive(None)]
                while True:  # everything already sent: all workers waiting right now join the batch
                    try:
                        msgs.append(self._inbox.get_nowait())
                    except queue_mod.Empty:
                        break
                for msg in msgs:
                    kind, w = msg[0], msg[1]
                    if kind == "ready":
                        self._ready.add(w)
                        idle.append(w)
                    elif kind == "obs":
                        waiting.append((w, msg[2], msg[3]))
                    elif kind == "done":
                        stats.episodes += 1
                        stats.env_steps += msg[2]["steps"]
                        on_record(running[w].jobs[msg[3]], msg[2])
                    elif kind == "unit_done":
                        running.pop(w)
                        idle.append(w)
                    elif kind == "replica_idle":
                        replicas.release(w)
                    elif kind == "replica_error":
                        raise EvaluationError(f"policy replica {w}: {msg[2]}\n{msg[3]}")
                    elif kind == "error":
                        _, _, name, text, tb, is_import = msg
                        unit = running.get(w)
                        where = f" in {unit.jobs[0].task} episode {unit.jobs[0].episode_id}" if unit else ""
                        if is_import:
                            raise SimulatorImportError(text)
                        raise EvaluationError(f"{name}{where}: {text}\n{tb}")
                dispatch()
                while waiting and replicas.has_idle():
                    batch, waiting = waiting[: self.max_batch], waiting[self.max_batch :]
                    replicas.submit(batch)
        finally:
            replicas.close()
            stats.wall_seconds += time.perf_counter() - start

    def close(self) -> None:
        for box in self._outboxes:
            try:
                box.put(("stop",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5.0
        for proc in self._procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
        for q in [self._inbox, *self._outboxes]:
            q.cancel_join_thread()
            q.close()

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_pool(evaluator: Evaluator, workers: int, *, max_batch: int | None = None) -> InlinePool | ProcessPool:
    """`InlinePool` for one worker, `ProcessPool` otherwise."""
    if workers == 1:
        return InlinePool(evaluator)
    return ProcessPool(evaluator, workers, max_batch=max_batch)

"""The checkpoint × mode sweep: resolve bundles, validate everything up front, run the missing
episodes, then summarise every cell and pick the best one."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlm4vla.errors import one_line
from vlm4vla.evaluation.chunking import steps_per_query
from vlm4vla.evaluation.devices import check_dtype, device_type
from vlm4vla.evaluation.distributed import Launch, ProcessGroup, assign_shards
from vlm4vla.evaluation.plugin import EvaluationError, Evaluator, require_action_statistics
from vlm4vla.evaluation.report import write_reports
from vlm4vla.evaluation.runner import Job, PredictFn, RunStats, Unit, episode_seed, make_pool
from vlm4vla.evaluation.store import (
    CellStore,
    ResultsLock,
    StoreError,
    cell_directory,
    ensure_writable,
    episode_key,
)
from vlm4vla.files import write_atomic
from vlm4vla.policy.bundle import CONFIG_NAME, BundleError, check_bundle_files

_STEP = re.compile(r"^step=(\d+)$")
PLAN_NAME = "plan.json"


@dataclass(frozen=True)
class Checkpoint:
    """A policy bundle to evaluate; ``name`` is its results directory under ``--out``."""

    name: str
    path: Path
    step: int | None
    config: Mapping[str, Any] = field(compare=False, repr=False)


def resolve_checkpoints(path: str | os.PathLike) -> list[Checkpoint]:
    """One bundle, or every ``step=*`` bundle of a run directory (or of its ``checkpoints/``), by step.

    Every bundle's files are checked here (config, complete weights, processor), so a bad
    bundle stops the sweep before any simulator starts rather than after hours of rollouts.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such policy bundle or run directory")
    if (path / CONFIG_NAME).is_file() or not path.is_dir():
        match = _STEP.match(path.name)
        return [Checkpoint(path.name, path, int(match.group(1)) if match else None, check_bundle_files(path))]
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = sorted(
        ((int(m.group(1)), d) for d in root.iterdir() if d.is_dir() and (m := _STEP.match(d.name))),
        key=lambda item: item[0],
    )
    if not found:
        raise BundleError(
            f"{path}: neither a policy bundle ({CONFIG_NAME}) nor a run directory with checkpoints/step=* bundles"
        )
    checkpoints = []
    for step, d in found:
        try:
            config = check_bundle_files(d)
        except BundleError as err:
            raise BundleError(f"bundle {d.name} of run directory {path} is unusable: {err}") from None
        checkpoints.append(Checkpoint(d.name, d, step, config))
    return checkpoints


@dataclass
class SweepSettings:
    """What to run. ``modes=None``: the protocol's modes (`Evaluator.protocol_modes`).
    ``allow_unnormalized``: evaluate bundles without action statistics (refused otherwise)."""

    modes: Sequence[str] | None = None
    tasks: Sequence[str] | None = None
    episodes_per_task: int | None = None
    max_steps: int | None = None
    seed: int = 0
    workers: int = 1
    max_batch: int | None = None
    video: int = 0
    allow_unnormalized: bool = False
    device: str = "cpu"
    """The resolved policy device (`vlm4vla.evaluation.devices.resolve_device`)."""
    devices: Sequence[str] = ()
    """One policy replica per entry (`resolve_devices`), serving all workers; empty: ``(device,)``."""
    dtype: str = "float32"
    suite_options: Mapping[str, Any] = field(default_factory=dict)
    """The plugin's constructor options, recorded in ``OUT/plan.json`` for ``--summarize``."""

    @property
    def replica_devices(self) -> list[str]:
        return list(self.devices) or [self.device]


@dataclass
class SweepResult:
    cells: list[dict[str, Any]]
    best: dict[str, Any] | None
    stats: RunStats
    ran: int
    skipped: int
    reported: bool = True
    """Whether this process wrote the reports (rank 0, or the last independent shard to finish)."""
    suite: str = ""


PolicyLoader = Callable[[Checkpoint], "PredictFn | list[PredictFn]"]
"""A checkpoint's predict function (called once per replica device), or the list of its replicas."""


def load_policy(checkpoint: Checkpoint, *, device: str = "cpu", dtype: str = "float32") -> PredictFn:
    """``VLAPolicy.from_pretrained`` on ``device`` as a predict function returning numpy (B, N, D).

    ``dtype`` is the VLM's precision; the ActionQuery and the head stay in fp32 (the hidden state
    is cast to the head's dtype). Forwards run under ``torch.inference_mode``.
    """
    import torch

    from vlm4vla.policy.policy import VLAPolicy

    policy = VLAPolicy.from_pretrained(checkpoint.path, device=device)
    if dtype != "float32":
        policy.backbone.model.to(getattr(torch, dtype))

    def predict(images: Sequence[np.ndarray], instructions: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            return policy.predict_chunk(list(images), list(instructions)).numpy()

    return predict


def plan_episodes(evaluator: Evaluator, settings: SweepSettings) -> list[dict[str, Any]]:
    """The episode specs of the run (``task`` and ``episode_id`` set), in protocol order."""
    all_tasks = list(evaluator.tasks())
    tasks = all_tasks if not settings.tasks else list(settings.tasks)
    unknown = [t for t in tasks if t not in all_tasks]
    if unknown:
        raise EvaluationError(
            f"--tasks: unknown task(s) {', '.join(unknown)} for suite {evaluator.name!r}; available: {', '.join(all_tasks)}"
        )
    specs: list[dict[str, Any]] = []
    for task in tasks:
        seen = set()
        for spec in evaluator.episodes(task, episodes_per_task=settings.episodes_per_task):
            spec = {**spec, "task": task}
            if "episode_id" not in spec:
                raise EvaluationError(f"suite {evaluator.name!r}: an episode spec of {task!r} has no 'episode_id'")
            if spec["episode_id"] in seen:
                raise EvaluationError(
                    f"suite {evaluator.name!r}: duplicate episode_id {spec['episode_id']!r} in {task!r}"
                )
            seen.add(spec["episode_id"])
            specs.append(spec)
    return specs


def cell_meta(evaluator: Evaluator, settings: SweepSettings) -> dict[str, Any]:
    """The settings recorded in every cell's ``meta.json`` (a resume with other values is refused)."""
    return {
        "suite": evaluator.name,
        "protocol": evaluator.protocol,
        "seed": settings.seed,
        "max_steps": settings.max_steps,
        "device": device_type(settings.replica_devices[0]),
        "dtype": settings.dtype,
        "settings": evaluator.settings(),
        "simulator": evaluator.simulator_versions(),
    }


def _safe(name: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(name)).strip("_") or "_"


def run_sweep(
    evaluator: Evaluator,
    checkpoints: Sequence[Checkpoint],
    out: str | os.PathLike,
    settings: SweepSettings,
    *,
    policy_loader: PolicyLoader | None = None,
    on_plan: Callable[[int, int], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    launch: Launch | None = None,
    group: ProcessGroup | None = None,
) -> SweepResult:
    """Evaluate every (checkpoint, mode) cell, resuming from ``out``, and write the reports.

    Everything that can fail cheaply is checked before any env starts: the output directory,
    every bundle's compatibility with the suite, the simulator's availability, the task list
    and the results already stored. ``on_plan(to_run, already_done)`` is called once before
    running, ``on_record(record)`` after each stored episode.

    ``policy_loader(checkpoint)`` returns a predict function, called once per replica
    (``settings.devices``), or a list of replicas (`vlm4vla.evaluation.remote`: one per policy
    server). Default: `load_policy` on each device in ``settings.dtype``.

    ``launch`` (`vlm4vla.evaluation.distributed`): this process's rank. Its shard of the units is
    run and appended to its own shard files; in a grouped launch (``group``: torchrun / srun) the
    ranks agree on every check and on the plan before any episode runs, and rank 0 writes the
    reports once every rank has finished. An independent shard (``--shard``) writes them only if
    it finds every cell complete when it ends (the last shard to finish does).

    ``out`` is locked for the run (`ResultsLock`, one lock per rank). The reports are rewritten
    only once every planned episode is on disk: a failed or interrupted run leaves the previous
    reports as they were (its finished episodes are kept and the next run resumes from them).
    """
    launch = launch or Launch()
    group = group or ProcessGroup(Launch())
    check_dtype(settings.dtype)
    if settings.modes is None:
        settings = dataclasses.replace(settings, modes=list(evaluator.protocol_modes()))

    def prepare() -> tuple[Path, list[dict[str, Any]]]:
        directory = ensure_writable(out)
        for ckpt in checkpoints:
            try:
                require_action_statistics(ckpt.config, allow_unnormalized=settings.allow_unnormalized)
                evaluator.check_bundle(ckpt.config)
            except EvaluationError as err:
                raise type(err)(f"{ckpt.path}: {err}") from None
        evaluator.check_available()
        specs = plan_episodes(evaluator, settings)
        if not specs:
            raise EvaluationError(f"suite {evaluator.name!r}: no episodes to run for the selected tasks")
        if not evaluator.reuses_envs and any(evaluator.env_group(spec) is not None for spec in specs):
            raise EvaluationError(
                f"suite {evaluator.name!r}: env_group shares envs between episodes but the plugin does not override reuse_env"
            )
        return directory, specs

    out_dir, specs = _agree(group, launch, prepare)
    lock = ResultsLock(out_dir, rank=launch.rank, world_size=launch.world_size)
    _agree(group, launch, lock.acquire, undo=lock.release)
    try:
        return _run_locked(
            evaluator, checkpoints, out_dir, settings, specs, policy_loader, on_plan, on_record, launch, group
        )
    finally:
        lock.release()


def _agree(group: ProcessGroup, launch: Launch, step: Callable[[], Any], undo: Callable[[], None] | None = None) -> Any:
    """Run ``step`` on every rank and go on only if it succeeded on all of them: a rank whose
    check failed raises its error, the others one line naming it (instead of waiting forever)."""
    try:
        value, failure = step(), None
    except Exception as err:  # every rank must reach the gather, whatever went wrong
        value, failure, error = None, one_line(err), err
    failures = group.all_gather(failure)
    if failure is not None:
        raise error
    stopped = [(rank, text) for rank, text in enumerate(failures) if text is not None]
    if stopped:
        if undo is not None:
            undo()
        rank, text = stopped[0]
        raise EvaluationError(f"{launch.describe()}: stopping because rank {rank} failed: {text}")
    return value


def _plan_record(
    evaluator: Evaluator,
    checkpoints: Sequence[Checkpoint],
    settings: SweepSettings,
    specs: Sequence[Mapping[str, Any]],
    launch: Launch,
) -> dict[str, Any]:
    """``OUT/plan.json``: what `summarize_results` needs to rebuild the reports from the shards."""
    return {
        "suite": evaluator.name,
        "shards": launch.world_size if launch.source == "shard" else None,
        "suite_options": dict(settings.suite_options),
        "modes": list(settings.modes or ()),
        "checkpoints": [
            {"name": c.name, "path": str(c.path), "step": c.step, "chunk_size": int(c.config["chunk_size"])}
            for c in checkpoints
        ],
        "episodes": [[s["task"], s["episode_id"]] for s in specs],
    }


def _run_locked(
    evaluator: Evaluator,
    checkpoints: Sequence[Checkpoint],
    out: Path,
    settings: SweepSettings,
    specs: Sequence[dict[str, Any]],
    policy_loader: PolicyLoader | None,
    on_plan: Callable[[int, int], None] | None,
    on_record: Callable[[dict[str, Any]], None] | None,
    launch: Launch,
    group: ProcessGroup,
) -> SweepResult:
    first_of_task: dict[str, list[Any]] = {}
    for spec in specs:
        first_of_task.setdefault(spec["task"], []).append(spec["episode_id"])

    plan = _plan_record(evaluator, checkpoints, settings, specs, launch)
    meta: dict[str, Any] = {}

    def load_and_plan() -> tuple[dict[tuple[str, str], CellStore], list[Unit], int]:
        meta.update(cell_meta(evaluator, settings))  # plugin code: inside the agreed step
        stores: dict[tuple[str, str], CellStore] = {}
        units: list[Unit] = []
        skipped = 0
        for ckpt in checkpoints:
            chunk = int(ckpt.config["chunk_size"])
            bundle = evaluator.bundle_settings(ckpt.config)
            for mode in settings.modes:
                directory = cell_directory(out, ckpt.name, mode)
                store = CellStore(directory, {**meta, "chunk_size": chunk, "bundle": bundle}, rank=launch.rank)
                stores[(ckpt.name, mode)] = store
                done = store.load(repair=True)
                groups: dict[str, list[Job]] = {}
                for spec in specs:
                    spec = {**spec, "bundle": bundle}
                    finished = episode_key(spec["task"], spec["episode_id"]) in done
                    env_group = evaluator.env_group(spec)
                    skipped += finished
                    video = None
                    if settings.video and spec["episode_id"] in first_of_task[spec["task"]][: settings.video]:
                        video = str(directory / "videos" / _safe(spec["task"]) / f"{_safe(spec['episode_id'])}.mp4")
                    job = Job(
                        spec=spec,
                        task=spec["task"],
                        episode_id=spec["episode_id"],
                        checkpoint=ckpt.name,
                        step=ckpt.step,
                        mode=mode,
                        chunk_size=chunk,
                        # A shared env is seeded once, with the base seed (the released code's env.seed(0)).
                        seed=settings.seed
                        if env_group is not None
                        else episode_seed(settings.seed, spec["task"], spec["episode_id"]),
                        max_steps=settings.max_steps,
                        video_path=video,
                        protocol=evaluator.protocol,
                        replay=finished,
                    )
                    if env_group is None:
                        units.append(Unit([job]))
                    else:
                        groups.setdefault(env_group, []).append(job)
                # A group is one unit, run in order in one env (replaying its finished episodes).
                units.extend(Unit(jobs, shared_env=True) for jobs in groups.values())
        return stores, units, skipped

    stores, all_units, skipped = _agree(group, launch, load_and_plan)
    digest = _digest(plan, settings, meta)
    digests = group.all_gather(digest)  # after every rank has read the stores: no rank has appended yet
    if len(set(digests)) > 1:
        other = next(r for r, d in enumerate(digests) if d != digests[0])
        raise EvaluationError(
            f"{launch.describe()}: rank {other} was started with other arguments than rank 0 "
            "(checkpoints, modes, tasks, episodes or settings differ); launch every rank with the same command"
        )
    if launch.world_size > len(all_units):
        raise EvaluationError(
            f"{launch.describe()}: {launch.world_size} ranks for {len(all_units)} units of work "
            f"(checkpoint × mode × episode, an env-sharing group counting once); use at most {len(all_units)} ranks"
        )
    plan_path = out / PLAN_NAME

    def record_plan() -> None:
        if launch.source == "shard":
            _check_shard_plan(plan_path, digest, launch)
        if launch.rank == 0 or launch.source == "shard":
            text = json.dumps({**plan, "digest": digest}, indent=2, sort_keys=True, default=str) + "\n"
            write_atomic(plan_path, text)

    _agree(group, launch, record_plan)
    mine = _my_units(evaluator, all_units, settings, launch)
    to_run = sum(not job.replay for unit in mine for job in unit.jobs)
    if on_plan is not None:
        on_plan(to_run, skipped)

    stats = RunStats()

    def store_record(job: Job, record: dict[str, Any]) -> None:
        stores[(job.checkpoint, job.mode)].append(record)
        if on_record is not None:
            on_record(record)

    def run_mine() -> None:
        if not to_run:
            return
        devices = settings.replica_devices[: max(1, settings.workers)]
        with make_pool(evaluator, settings.workers, max_batch=settings.max_batch) as pool:
            for ckpt in checkpoints:
                units = [u for u in mine if u.jobs[0].checkpoint == ckpt.name]
                if units:
                    pool.run(units, _load_replicas(ckpt, devices, settings, policy_loader), store_record, stats)

    # Every rank meets here once its shard is done; no reports on failure: partial cells would
    # replace the last complete summary (or write ``"best": null`` for a sweep whose first bundle
    # failed to load).
    _agree(group, launch, run_mine)
    if not (launch.writes_reports or launch.source == "shard"):
        return SweepResult(cells=[], best=None, stats=stats, ran=to_run, skipped=skipped, reported=False)
    if launch.world_size > 1:
        for store in stores.values():
            store.load(repair=False)  # the other ranks' records
    wanted = [episode_key(s["task"], s["episode_id"]) for s in specs]
    cells = _cells(evaluator, plan, stores, wanted)
    incomplete = [f"{c['checkpoint']}/{c['mode']}" for c in cells if not c["complete"]]
    if incomplete and launch.source == "shard":  # other shards are still running: the last one reports
        return SweepResult(cells=cells, best=None, stats=stats, ran=to_run, skipped=skipped, reported=False)
    if incomplete:
        # Reports are rebuilt only from complete data; the episodes stay on disk for a re-run.
        raise EvaluationError(
            f"{out}: cells {', '.join(incomplete)} are missing episodes after the run; reports not rewritten"
        )
    best = write_reports(out, evaluator.name, evaluator.headline_metric, cells)
    return SweepResult(cells=cells, best=best, stats=stats, ran=to_run, skipped=skipped, reported=True)


def _my_units(evaluator: Evaluator, units: Sequence[Unit], settings: SweepSettings, launch: Launch) -> list[Unit]:
    """This rank's units. A grouped launch splits what remains (every rank read the same stores);
    independent shards split the whole plan, so shards started at different times agree."""
    pending = [u for u in units if u.pending]
    if launch.world_size == 1:
        return [_trimmed(u) for u in pending]
    pool = pending if launch.grouped else list(units)
    costs = [sum(evaluator.expected_steps(j.spec, max_steps=settings.max_steps) for j in u.jobs) for u in pool]
    owners = assign_shards(costs, launch.world_size)
    return [_trimmed(u) for u, owner in zip(pool, owners, strict=True) if owner == launch.rank and u.pending]


def _trimmed(unit: Unit) -> Unit:
    """A unit up to its last missing episode (the finished ones before it are replayed)."""
    last = max(i for i, job in enumerate(unit.jobs) if not job.replay)
    return dataclasses.replace(unit, jobs=unit.jobs[: last + 1])


def _check_shard_plan(path: Path, digest: str, launch: Launch) -> None:
    """Independent shards split the plan among themselves only if they all run the same one: a
    plan written by shards of the same count is binding; any other (a single or grouped run
    before, or another shard count) is replaced."""
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        return
    if not isinstance(stored, dict) or stored.get("shards") != launch.world_size:
        return
    if stored.get("digest") not in (None, digest):
        raise EvaluationError(
            f"{path}: written by --shard …/{launch.world_size} of a sweep with another plan (checkpoints, modes, tasks, "
            "episodes or settings); every shard of a sweep must be started with the same command (delete the file "
            "once that sweep's shards have all finished, or use another --out)"
        )


def _digest(plan: Mapping[str, Any], settings: SweepSettings, meta: Mapping[str, Any]) -> str:
    """What ranks must agree on: the plan and every recorded setting (simulator versions too)."""
    import hashlib

    what = {**plan, "meta": dict(meta), "seed": settings.seed, "max_steps": settings.max_steps}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _load_replicas(
    ckpt: Checkpoint, devices: Sequence[str], settings: SweepSettings, policy_loader: PolicyLoader | None
) -> list[PredictFn]:
    if policy_loader is not None:
        loaded = policy_loader(ckpt)
        if isinstance(loaded, list):  # the replicas themselves (e.g. one per policy server)
            return loaded
        return [loaded, *(policy_loader(ckpt) for _ in devices[1:])]
    return [load_policy(ckpt, device=device, dtype=settings.dtype) for device in devices]


def _cells(
    evaluator: Evaluator,
    plan: Mapping[str, Any],
    stores: Mapping[tuple[str, str], CellStore],
    wanted: Sequence[tuple[str, str]],
) -> list[dict[str, Any]]:
    """One summary per (checkpoint, mode) of ``plan`` from the records of the planned episodes."""
    wanted_set = set(wanted)
    metric = evaluator.headline_metric
    cells = []
    for index, ckpt in enumerate(plan["checkpoints"]):
        chunk = int(ckpt["chunk_size"])
        for mode in plan["modes"]:
            records = [
                r
                for r in stores[(ckpt["name"], mode)].records()
                if episode_key(r["task"], r["episode_id"]) in wanted_set
            ]
            cells.append(
                {
                    "checkpoint": ckpt["name"],
                    "checkpoint_path": ckpt["path"],
                    "checkpoint_index": index,
                    "step": ckpt["step"],
                    "mode": mode,
                    "chunk_size": chunk,
                    "steps_per_query": steps_per_query(mode, chunk),
                    "episodes": len(records),
                    "expected_episodes": len(wanted_set),
                    "complete": len(records) == len(wanted_set),
                    "headline_metric": metric,
                    metric: evaluator.metric(records),
                    "metrics": evaluator.summarize(records),
                }
            )
    return cells


def summarize_results(out: str | os.PathLike) -> SweepResult:
    """Rebuild ``OUT``'s reports from whatever shard files exist (``vlm4vla-eval --summarize``).

    The plan comes from ``OUT/plan.json`` (written when the sweep started); cells still missing
    episodes are reported with their counts, and the best cell is picked among the complete
    ones. Reads only: no lock is needed, and a running sweep is not disturbed.
    """
    from vlm4vla.evaluation.plugin import load_evaluator

    out = Path(out)
    plan_path = out / PLAN_NAME
    if not plan_path.is_file():
        raise StoreError(f"{plan_path}: not found; --summarize needs a results directory written by vlm4vla-eval")
    try:
        plan = json.loads(plan_path.read_text())
        evaluator = load_evaluator(plan["suite"], plan.get("suite_options") or {})
        wanted = [episode_key(task, episode_id) for task, episode_id in plan["episodes"]]
        stores = {
            (c["name"], mode): CellStore(cell_directory(out, c["name"], mode), {})
            for c in plan["checkpoints"]
            for mode in plan["modes"]
        }
    except (ValueError, KeyError, TypeError) as err:
        raise StoreError(f"{plan_path}: damaged ({one_line(err)}); re-run the sweep to rewrite it") from None
    cells = _cells(evaluator, plan, stores, wanted)
    complete = [c for c in cells if c["complete"]]
    best = write_reports(out, evaluator.name, evaluator.headline_metric, cells, candidates=complete)
    ran = sum(c["episodes"] for c in cells)
    return SweepResult(
        cells=cells, best=best, stats=RunStats(), ran=ran, skipped=0, reported=True, suite=evaluator.name
    )

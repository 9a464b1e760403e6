"""The checkpoint × mode sweep: resolve bundles, validate everything up front, run the missing
episodes, then summarise every cell and pick the best one."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlm4vla.evaluation.chunking import steps_per_query
from vlm4vla.evaluation.devices import check_dtype, device_type
from vlm4vla.evaluation.plugin import EvaluationError, Evaluator, require_action_statistics
from vlm4vla.evaluation.report import write_reports
from vlm4vla.evaluation.runner import Job, PredictFn, RunStats, Unit, episode_seed, make_pool
from vlm4vla.evaluation.store import CellStore, ResultsLock, cell_directory, ensure_writable, episode_key
from vlm4vla.policy.bundle import CONFIG_NAME, BundleError, check_bundle_files

_STEP = re.compile(r"^step=(\d+)$")


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
    dtype: str = "float32"


@dataclass
class SweepResult:
    cells: list[dict[str, Any]]
    best: dict[str, Any] | None
    stats: RunStats
    ran: int
    skipped: int


PolicyLoader = Callable[[Checkpoint], PredictFn]


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
        "device": device_type(settings.device),
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
) -> SweepResult:
    """Evaluate every (checkpoint, mode) cell, resuming from ``out``, and write the reports.

    Everything that can fail cheaply is checked before any env starts: the output directory,
    every bundle's compatibility with the suite, the simulator's availability, the task list
    and the results already stored. ``on_plan(to_run, already_done)`` is called once before
    running, ``on_record(record)`` after each stored episode.

    ``policy_loader`` defaults to `load_policy` on ``settings.device`` in ``settings.dtype``.

    ``out`` is locked for the run (`ResultsLock`). The reports are rewritten only once every
    planned episode is on disk: a failed or interrupted run leaves the previous reports as
    they were (its finished episodes are kept and the next run resumes from them).
    """
    out = ensure_writable(out)
    check_dtype(settings.dtype)
    if policy_loader is None:
        policy_loader = functools.partial(load_policy, device=settings.device, dtype=settings.dtype)
    if settings.modes is None:
        settings = dataclasses.replace(settings, modes=list(evaluator.protocol_modes()))
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
    with ResultsLock(out):
        return _run_locked(evaluator, checkpoints, out, settings, specs, policy_loader, on_plan, on_record)


def _run_locked(
    evaluator: Evaluator,
    checkpoints: Sequence[Checkpoint],
    out: Path,
    settings: SweepSettings,
    specs: Sequence[dict[str, Any]],
    policy_loader: PolicyLoader,
    on_plan: Callable[[int, int], None] | None,
    on_record: Callable[[dict[str, Any]], None] | None,
) -> SweepResult:
    first_of_task: dict[str, list[Any]] = {}
    for spec in specs:
        first_of_task.setdefault(spec["task"], []).append(spec["episode_id"])

    meta = cell_meta(evaluator, settings)
    stores: dict[tuple[str, str], CellStore] = {}
    units_by_ckpt: dict[str, list[Unit]] = {}
    skipped = 0
    for ckpt in checkpoints:
        chunk = int(ckpt.config["chunk_size"])
        bundle = evaluator.bundle_settings(ckpt.config)
        units = units_by_ckpt.setdefault(ckpt.name, [])
        for mode in settings.modes:
            directory = cell_directory(out, ckpt.name, mode)
            store = stores[(ckpt.name, mode)] = CellStore(directory, {**meta, "chunk_size": chunk, "bundle": bundle})
            done = store.load(repair=True)
            groups: dict[str, list[Job]] = {}
            for spec in specs:
                spec = {**spec, "bundle": bundle}
                finished = episode_key(spec["task"], spec["episode_id"]) in done
                group = evaluator.env_group(spec)
                if finished:
                    skipped += 1
                    if group is None:
                        continue
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
                    seed=settings.seed if group is not None else episode_seed(settings.seed, spec["task"], spec["episode_id"]),
                    max_steps=settings.max_steps,
                    video_path=video,
                    protocol=evaluator.protocol,
                    replay=finished,
                )
                if group is None:
                    units.append(Unit([job]))
                else:
                    groups.setdefault(group, []).append(job)
            for jobs in groups.values():
                # Run up to the group's last missing episode, replaying the finished ones before it.
                last = max((i for i, j in enumerate(jobs) if not j.replay), default=None)
                if last is not None:
                    units.append(Unit(jobs[: last + 1], shared_env=True))
    to_run = sum(not job.replay for units in units_by_ckpt.values() for unit in units for job in unit.jobs)
    if on_plan is not None:
        on_plan(to_run, skipped)

    stats = RunStats()

    def store_record(job: Job, record: dict[str, Any]) -> None:
        stores[(job.checkpoint, job.mode)].append(record)
        if on_record is not None:
            on_record(record)

    # No reports on failure: partial cells would replace the last complete summary (or write
    # ``"best": null`` for a sweep whose first bundle failed to load).
    if to_run:
        with make_pool(evaluator, settings.workers, max_batch=settings.max_batch) as pool:
            for ckpt in checkpoints:
                units = units_by_ckpt[ckpt.name]
                if units:
                    pool.run(units, policy_loader(ckpt), store_record, stats)
    cells, best = _summarize(evaluator, checkpoints, settings, stores, specs, out)
    return SweepResult(cells=cells, best=best, stats=stats, ran=to_run, skipped=skipped)


def _summarize(
    evaluator: Evaluator,
    checkpoints: Sequence[Checkpoint],
    settings: SweepSettings,
    stores: Mapping[tuple[str, str], CellStore],
    specs: Sequence[Mapping[str, Any]],
    out: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    wanted = {episode_key(s["task"], s["episode_id"]) for s in specs}
    metric = evaluator.headline_metric
    cells = []
    for index, ckpt in enumerate(checkpoints):
        chunk = int(ckpt.config["chunk_size"])
        for mode in settings.modes:
            records = [
                r for r in stores[(ckpt.name, mode)].records() if episode_key(r["task"], r["episode_id"]) in wanted
            ]
            metrics = evaluator.summarize(records)
            cells.append(
                {
                    "checkpoint": ckpt.name,
                    "checkpoint_path": str(ckpt.path),
                    "checkpoint_index": index,
                    "step": ckpt.step,
                    "mode": mode,
                    "chunk_size": chunk,
                    "steps_per_query": steps_per_query(mode, chunk),
                    "episodes": len(records),
                    "expected_episodes": len(specs),
                    "complete": len(records) == len(specs),
                    "headline_metric": metric,
                    metric: evaluator.metric(records),
                    "metrics": metrics,
                }
            )
    incomplete = [f"{c['checkpoint']}/{c['mode']}" for c in cells if not c["complete"]]
    if incomplete:
        # Reports are rebuilt only from complete data; the episodes stay on disk for a re-run.
        raise EvaluationError(
            f"{out}: cells {', '.join(incomplete)} are missing episodes after the run; reports not rewritten"
        )
    best = write_reports(out, evaluator.name, metric, cells)
    return cells, best

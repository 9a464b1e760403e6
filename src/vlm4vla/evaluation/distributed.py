"""Sharding ``vlm4vla-eval`` over ranks: torchrun, srun, or independent shards (job arrays).

A *launch* is one run of the sweep split over ``world_size`` ranks. Rank and world size come from

* ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``) or ``srun`` (``SLURM_PROCID`` /
  ``SLURM_STEP_NUM_TASKS`` / ``SLURM_LOCALID``, set for the tasks of an srun step only): the ranks run together, join a gloo process group (no
  GPU needed), split the *remaining* work after every rank has read the stored episodes, and meet
  at the end so that rank 0 alone writes the reports;
* ``--shard INDEX/COUNT`` (a SLURM job array, or hand-started processes): each shard runs on its
  own, whenever it is scheduled, and takes its part of the *whole* plan (so shards started at
  different times agree on who does what); ``vlm4vla-eval --summarize OUT`` writes the reports
  once they have finished.

Which rank ran an episode never changes its outcome (seeds derive from the episode), so the
split is free to follow the expected lengths (`assign_shards`). torch is imported only when a
process group is started.
"""

from __future__ import annotations

import datetime
import heapq
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlm4vla.errors import ConfigError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
SLURM_VARS = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID")


@dataclass(frozen=True)
class Launch:
    """Where this process sits in its launch. ``grouped``: the ranks run together (a process group
    exists, the remaining work is split, rank 0 writes the reports)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"
    """``single``, ``torchrun``, ``slurm`` or ``shard``."""

    @property
    def grouped(self) -> bool:
        return self.source in ("torchrun", "slurm") and self.world_size > 1

    @property
    def writes_reports(self) -> bool:
        """Single process and rank 0 of a group: yes; an independent shard: no (``--summarize``)."""
        return self.rank == 0 and self.source != "shard"

    def describe(self) -> str:
        return (
            "single process"
            if self.world_size == 1 and self.source != "shard"
            else (f"rank {self.rank} of {self.world_size} ({self.source})")
        )


def _int_var(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"${name}={text!r}: expected an integer (set by torchrun or srun)") from None
    if value < 0:
        raise ConfigError(f"${name}={value}: expected ≥ 0")
    return value


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/8"`` → ``(3, 8)``; one line for anything else."""
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ConfigError(f"--shard {text!r}: expected INDEX/COUNT, e.g. 0/4 (index from 0)")
    index_i, count_i = int(index), int(count)
    if count_i < 1 or index_i >= count_i:
        raise ConfigError(f"--shard {text}: expected 0 ≤ INDEX < COUNT")
    return index_i, count_i


def detect_launch(environ: Mapping[str, str] | None = None, *, shard: str | None = None) -> Launch:
    """This process's `Launch`, from ``--shard`` or the launcher's environment (torchrun first)."""
    environ = os.environ if environ is None else environ
    if shard is not None:
        if "WORLD_SIZE" in environ and _int_var(environ, "WORLD_SIZE") > 1:
            raise ConfigError("--shard: not under torchrun (it already gives each rank its shard)")
        index, count = parse_shard(shard)
        return Launch(rank=index, world_size=count, local_rank=0, source="shard")
    if all(v in environ for v in TORCHRUN_VARS):
        names, source = TORCHRUN_VARS, "torchrun"
    elif all(v in environ for v in SLURM_VARS):
        # Only an srun step's tasks are ranks: the batch script of ``sbatch --ntasks=8`` also sees
        # SLURM_PROCID=0 and SLURM_NTASKS=8 but no SLURM_STEP_NUM_TASKS (it is one process).
        names, source = SLURM_VARS, "slurm"
    else:
        return Launch()
    rank, world, local = (_int_var(environ, n) for n in names)
    if world < 1 or rank >= world:
        raise ConfigError(f"${names[0]}={rank} with ${names[1]}={world}: expected 0 ≤ rank < world size")
    if world == 1:
        return Launch(source=source)
    return Launch(rank=rank, world_size=world, local_rank=local, source=source)


def rendezvous_environment(launch: Launch, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``MASTER_ADDR`` / ``MASTER_PORT`` for the process group. torchrun sets both; under srun the
    batch script exports ``MASTER_ADDR`` (the first node) and the port defaults to one derived from
    the job id, as Lightning's SLURM environment does."""
    environ = os.environ if environ is None else environ
    found = {k: environ[k] for k in ("MASTER_ADDR", "MASTER_PORT") if k in environ}
    if "MASTER_ADDR" not in found:
        if launch.source == "slurm" and int(environ.get("SLURM_NNODES", "1") or 1) == 1:
            found["MASTER_ADDR"] = "127.0.0.1"
        else:
            raise ConfigError(
                f"{launch.describe()}: $MASTER_ADDR is not set; export the first node's host name, e.g. "
                'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)'
            )
    if "MASTER_PORT" not in found:
        job = environ.get("SLURM_JOB_ID", "")
        found["MASTER_PORT"] = str(15000 + int(job[-4:]) if job[-4:].isdigit() else 29500)
    return found


class ProcessGroup:
    """The gloo process group of a grouped launch (a no-op stand-in otherwise)."""

    def __init__(self, launch: Launch, *, timeout_minutes: float = 24 * 60) -> None:
        self.launch = launch
        self._dist: Any = None
        if not launch.grouped:
            return
        try:
            import torch.distributed as dist
        except ImportError:  # e.g. a simulator's environment evaluating through a policy server
            raise ConfigError(
                f"{launch.describe()}: torchrun/srun ranks meet in a torch.distributed (gloo) group, and torch is not "
                "installed here; run independent shards instead (--shard INDEX/COUNT, then --summarize)"
            ) from None

        for key, value in rendezvous_environment(launch).items():
            os.environ.setdefault(key, value)
        dist.init_process_group(
            "gloo",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
        self._dist = dist

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (``[obj]`` without a group)."""
        if self._dist is None:
            return [obj]
        gathered: list[Any] = [None] * self.launch.world_size
        self._dist.all_gather_object(gathered, obj)
        return gathered

    def close(self) -> None:
        if self._dist is not None and self._dist.is_initialized():
            self._dist.destroy_process_group()
        self._dist = None

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assign_shards(costs: Sequence[float], world_size: int) -> list[int]:
    """The rank of each item: longest expected first, each to the least-loaded rank (ties → lower
    rank; equal costs keep plan order). Deterministic, and within ``max(cost)`` of the best split."""
    if world_size < 1:
        raise ConfigError(f"world size must be ≥ 1, got {world_size}")
    order = sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i))
    loads = [(0.0, rank) for rank in range(world_size)]
    owner = [0] * len(costs)
    for i in order:
        load, rank = heapq.heappop(loads)
        owner[i] = rank
        heapq.heappush(loads, (load + float(costs[i]), rank))
    return owner


__all__ = [
    "Launch",
    "ProcessGroup",
    "assign_shards",
    "detect_launch",
    "parse_shard",
    "rendezvous_environment",
]

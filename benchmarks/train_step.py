"""Median training-step time of `VLAModule` under the Lightning Trainer vs a bare PyTorch loop.

Both sides train the same tiny backbone (``VLAModule("tiny:qwen2.5-vl", chunk_size=4)``) from
the same initial weights, on the same pre-collated batches (built once with the backbone's
``input_processor`` and `VLACollator`), with the same AdamW parameter groups and LR schedule
(``VLAModule.configure_optimizers``) and gradient clipping at norm 1.0. Warm-up steps are
excluded. After each run the final weights of both sides are compared, to show that they did
exactly the same computation.

Interleaving (``--interleave``), to keep load from other processes on a shared machine from
landing on one side only:

* ``steps`` (default) — paired steps: next to every Trainer step a callback runs one bare step
  of the second model on the same batch, after the Trainer step on even repeats and before it
  on odd ones (whichever runs second finds the batch warm in the CPU caches). The ratio is
  the median of the per-step ratios.
* ``runs`` — whole runs alternate (Trainer first on even repeats, the bare loop first on odd
  ones); the ratio is the ratio of the pooled medians.

Times per step:

* ``step`` — Trainer: a callback's ``on_train_batch_start`` → ``on_train_batch_end`` (forward,
  ``self.log`` calls, zero_grad, backward, clipping, optimizer and scheduler step); bare:
  forward → scheduler step.
* ``loop`` — the interval between the starts of consecutive Trainer steps minus the paired
  bare step: the step plus the Trainer's own per-batch work outside the hooks (fetching the
  batch, ``batch_to_device``, the logger connector's bookkeeping). In ``runs`` mode the bare
  loop's interval includes its DataLoader ``next``.

``--breakdown`` adds two Trainer variants that differ from `VLAModule` only in
``training_step``: ``trainer[loss logs]`` logs the loss dict but not ``samples_per_second``
and ``lr``; ``trainer[no logs]`` calls no ``self.log``. The overheads of the three variants
over the bare step attribute the cost to logging and to the Trainer's own machinery.

    python benchmarks/train_step.py [--steps 40] [--warmup 5] [--repeats 5] [--threads 1]
                                    [--batch-size 8] [--interleave steps|runs] [--breakdown]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from vlm4vla.data.collate import VLACollator
from vlm4vla.training.module import VLAModule

BACKBONE = "tiny:qwen2.5-vl"
CHUNK = 4
INSTRUCTIONS = ("pick up the red block", "open the top drawer", "push the blue button to the left")


# ---------------------------------------------------------------------- data and models
def make_batches(count: int, batch_size: int, seed: int = 0) -> list[dict]:
    """``count`` collated batches of random samples in the datamodules' sample format."""
    torch.manual_seed(seed)
    processor = VLAModule(BACKBONE, chunk_size=CHUNK).build_policy().backbone.input_processor
    collate = VLACollator(processor)
    rng = np.random.default_rng(seed)
    batches = []
    for b in range(count):
        samples = []
        for i in range(batch_size):
            actions = rng.uniform(-1, 1, (CHUNK, 7)).astype(np.float32)
            actions[:, 6] = actions[:, 6] > 0
            samples.append({
                "image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
                "instruction": INSTRUCTIONS[(b * batch_size + i) % len(INSTRUCTIONS)],
                "actions": torch.from_numpy(actions),
                "action_mask": torch.ones(CHUNK, dtype=torch.bool),
            })
        batches.append(collate(samples))
    return batches


def _identity(batch):
    return batch


def make_loader(batches: list[dict]) -> DataLoader:
    """The pre-collated batches, in order, without re-collation (``batch_size=None``)."""
    return DataLoader(batches, batch_size=None, shuffle=False, num_workers=0, collate_fn=_identity)


def fresh_module(cls: type[VLAModule] = VLAModule) -> VLAModule:
    torch.manual_seed(0)  # the same initial weights (backbone and head) for every run
    module = cls(BACKBONE, chunk_size=CHUNK, lr=1e-4)
    module.build_policy()
    return module


class LossLogsOnly(VLAModule):
    """`VLAModule` without the per-step ``samples_per_second`` and ``lr`` logs."""

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")


class NoLogs(VLAModule):
    """`VLAModule` without any ``self.log`` call in the training step."""

    def training_step(self, batch, batch_idx):
        return self.policy(batch)["loss"]


# ---------------------------------------------------------------------- the bare loop
class BareStepper:
    """What the Trainer does per batch, in plain PyTorch, on its own copy of the model."""

    def __init__(self) -> None:
        self.module = fresh_module()
        self.policy = self.module.policy.train()
        config = self.module.configure_optimizers()  # the Trainer's AdamW groups and LambdaLR
        self.optimizer, self.scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]

    def step(self, batch: dict) -> float:
        """One training step; returns its wall time in seconds."""
        started = time.perf_counter()
        loss = self.policy(batch)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return time.perf_counter() - started


# ---------------------------------------------------------------------- timing
@dataclass
class Timing:
    step: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    paired: list[float] = field(default_factory=list)  # the bare step paired with each Trainer step
    paired_first: bool = False  # the paired bare step ran just before (not after) its Trainer step

    def steps(self, warmup: int) -> list[float]:
        return self.step[warmup:]

    def loops(self, warmup: int) -> list[float]:
        """Start-to-start intervals, minus the paired bare step that ran in between."""
        gaps = [b - a for a, b in zip(self.starts, self.starts[1:])]
        if self.paired:
            # Between two starts ran the bare step paired with the later (bare first) or the
            # earlier (bare after) Trainer step.
            between = self.paired[1:] if self.paired_first else self.paired
            gaps = [gap - bare for gap, bare in zip(gaps, between)]
        return gaps[warmup:]


class StepTimer(pl.Callback):
    """Wall time between the Trainer's batch-start and batch-end hooks; optionally runs a
    paired bare step on the same batch just before or just after each Trainer step (outside
    the timed window). Whichever side runs second finds the batch warm in the CPU caches, so
    the driver alternates the order between repeats."""

    def __init__(self, bare: BareStepper | None = None, *, bare_first: bool = False) -> None:
        self.timing = Timing(paired_first=bare_first)
        self.bare = bare
        self.bare_first = bare_first
        self._started = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.bare is not None and self.bare_first:
            self.timing.paired.append(self.bare.step(batch))
        self._started = time.perf_counter()
        self.timing.starts.append(self._started)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.timing.step.append(time.perf_counter() - self._started)
        if self.bare is not None and not self.bare_first:
            self.timing.paired.append(self.bare.step(batch))


class LogCost(pl.Callback):
    """Times ``self.log`` inside a Trainer hook, with the arguments `VLAModule` uses per step."""

    def __init__(self, calls: int = 500) -> None:
        self.calls = calls
        self.seconds_per_call: dict[str, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step < trainer.max_steps:  # only after the last (untimed tail of the) run
            return
        value = torch.tensor(0.5)
        cases = {
            "tensor, prog_bar (loss dict)": lambda: pl_module.log(
                "benchmark/tensor", value, batch_size=8, on_step=True, on_epoch=False, prog_bar=True,
                sync_dist=False,
            ),
            "python float (samples/s, lr)": lambda: pl_module.log("benchmark/float", 1e-4, batch_size=1),
        }
        for name, call in cases.items():
            call()  # the first call creates the metric's state
            started = time.perf_counter()
            for _ in range(self.calls):
                call()
            self.seconds_per_call[name] = (time.perf_counter() - started) / self.calls


@dataclass
class Run:
    timing: Timing
    module: VLAModule
    bare: Timing | None = None  # ``runs`` mode: the separate bare loop's timing
    bare_module: VLAModule | None = None
    logged_samples_per_second: float | None = None  # VLAModule's own metric at the last step


def run_trainer(
    batches: list[dict],
    cls: type[VLAModule] = VLAModule,
    *,
    paired: bool,
    bare_first: bool = False,
    probes: tuple[pl.Callback, ...] = (),
) -> Run:
    module = fresh_module(cls)
    bare = BareStepper() if paired else None
    timer = StepTimer(bare, bare_first=bare_first)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=len(batches), logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            gradient_clip_val=1.0, callbacks=[timer, *probes], default_root_dir=root,
        )
        trainer.fit(module, train_dataloaders=make_loader(batches))
    logged = trainer.callback_metrics.get("train/samples_per_second")
    return Run(timer.timing, module, bare_module=bare.module if bare else None,
               logged_samples_per_second=None if logged is None else float(logged))


def run_bare(batches: list[dict]) -> tuple[Timing, VLAModule]:
    stepper = BareStepper()
    timing = Timing()
    for batch in make_loader(batches):
        timing.starts.append(time.perf_counter())
        timing.step.append(stepper.step(batch))
    return timing, stepper.module


@torch.no_grad()
def max_weight_difference(a: VLAModule, b: VLAModule) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.policy.parameters(), b.policy.parameters()))


def ms(seconds: float) -> float:
    return 1e3 * seconds


# ---------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each run (default 5)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per batch (default 8)")
    parser.add_argument("--interleave", choices=("steps", "runs"), default="steps",
                        help="pair every Trainer step with a bare step (default) or alternate whole runs")
    parser.add_argument("--breakdown", action="store_true", help="also time Trainer variants with fewer logs")
    args = parser.parse_args(argv)
    for name in ("steps", "warmup", "repeats", "threads", "batch_size"):
        minimum = 0 if name == "warmup" else 1
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')}: expected an integer ≥ {minimum}")
    if args.steps < 2:
        parser.error("--steps: expected at least 2 (the loop time needs two consecutive steps)")

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")

    batches = make_batches(args.warmup + args.steps, args.batch_size)
    variants: dict[str, type[VLAModule]] = {"trainer": VLAModule}
    if args.breakdown:
        variants["trainer[loss logs]"] = LossLogsOnly
        variants["trainer[no logs]"] = NoLogs
    paired = args.interleave == "steps"
    w = args.warmup
    step_times: dict[str, list[float]] = {name: [] for name in (*variants, "bare")}
    loop_times: dict[str, list[float]] = {name: [] for name in (*variants, "bare")}
    overhead: dict[str, list[float]] = {name: [] for name in variants}  # paired: trainer_i − bare_i
    step_ratios: list[float] = []  # paired: per step; runs: per repeat
    throughput: list[tuple[float, float]] = []
    print(
        f"{BACKBONE}, chunk {CHUNK}, batch {args.batch_size}, {args.threads} thread(s), "
        f"interleave {args.interleave}: {args.repeats} × ({w} warm-up + {args.steps} timed steps) per variant"
    )
    log_cost = LogCost()
    for repeat in range(args.repeats):
        # Alternate which side goes first (in ``steps`` mode only the Trainer variants run).
        order = [*variants] + ([] if paired else ["bare"])
        results: dict[str, Run] = {}
        for name in order if repeat % 2 == 0 else order[::-1]:
            if name == "bare":
                bare_timing, bare_module = run_bare(batches)
            else:
                probes = (log_cost,) if args.breakdown and repeat == 0 and name == "trainer" else ()
                results[name] = run_trainer(
                    batches, variants[name], paired=paired, bare_first=repeat % 2 == 1, probes=probes
                )
        line = []
        for name, run in results.items():
            step_times[name] += run.timing.steps(w)
            loop_times[name] += run.timing.loops(w)
            if paired:
                bare = run.timing.paired[w:]
                step_times["bare"] += bare
                overhead[name] += [t - b for t, b in zip(run.timing.steps(w), bare)]
                if name == "trainer":
                    step_ratios += [t / b for t, b in zip(run.timing.steps(w), bare)]
            line.append(f"{name} {ms(statistics.median(run.timing.steps(w))):.2f} ms")
        trainer = results["trainer"]
        if paired:
            reference = trainer.bare_module
            bare_median = statistics.median(trainer.timing.paired[w:])
        else:
            reference = bare_module
            bare_median = statistics.median(bare_timing.steps(w))
            step_times["bare"] += bare_timing.steps(w)
            loop_times["bare"] += bare_timing.loops(w)
            step_ratios.append(statistics.median(trainer.timing.steps(w)) / bare_median)
        if trainer.logged_samples_per_second is not None:
            throughput.append((trainer.logged_samples_per_second, args.batch_size / trainer.timing.step[-1]))
        drift = max_weight_difference(trainer.module, reference)
        print(f"  repeat {repeat + 1}: " + ", ".join(line) + f", bare {ms(bare_median):.2f} ms"
              f" | max |Δweight| trainer vs bare {drift:.1e}")

    print(f"\n{'':20s} {'step median':>12s} {'loop median':>12s}")
    for name in (*variants, "bare"):
        loop = f"{ms(statistics.median(loop_times[name])):9.2f} ms" if loop_times[name] else f"{'—':>12s}"
        print(f"{name:20s} {ms(statistics.median(step_times[name])):9.2f} ms {loop}")
    trainer_step, bare_step = statistics.median(step_times["trainer"]), statistics.median(step_times["bare"])
    ratio = statistics.median(step_ratios) if paired else trainer_step / bare_step
    how = "median of paired per-step ratios" if paired else "ratio of pooled medians"
    print(f"\nstep time ratio Trainer / bare: {ratio:.3f} ({how}; target ≤ 1.05)")
    trainer_loop = statistics.median(loop_times["trainer"])
    bare_loop = bare_step if paired else statistics.median(loop_times["bare"])
    print(f"Trainer work outside the batch hooks: {ms(trainer_loop - trainer_step):+.2f} ms per step; "
          f"loop time ratio Trainer / bare {trainer_loop / bare_loop:.3f}")
    if throughput:
        logged = statistics.median(t[0] for t in throughput)
        measured = statistics.median(t[1] for t in throughput)
        print(f"VLAModule's logged train/samples_per_second at the last step: {logged:.0f}/s; "
              f"batch / measured step time of that step: {measured:.0f}/s")
    if args.breakdown:
        print(f"\none self.log call inside a Trainer hook ({log_cost.calls} calls timed):")
        for name, seconds in log_cost.seconds_per_call.items():
            print(f"  {name:30s} {1e6 * seconds:6.0f} µs")
        print("\nstep overhead over the bare step (median):")
        for name in variants:
            if paired:
                value = statistics.median(overhead[name])
                how = "of paired differences"
            else:
                value = statistics.median(step_times[name]) - bare_step
                how = "difference of medians"
            print(f"  {name:20s} {ms(value):+6.2f} ms ({how})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

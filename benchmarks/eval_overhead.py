"""Evaluation-harness overhead on the test-double ``reach`` env with a tiny random policy.

1. Per env step, one worker (in-process): the harness run (`run_sweep`: store, chunk queue,
   client, records) is timed end to end; the policy forward time is measured inside it. The
   same actions are then replayed with a bare ``env.step`` loop (fresh env per episode, same
   seeds) to get the raw env time. Harness overhead = harness − policy − raw env.
2. Env-steps/s with ``--workers 1`` vs ``--workers 2`` (the env is made CPU-bound with
   ``--env-ms`` of busy work per step so that parallelism is visible).

    python benchmarks/eval_overhead.py [--episodes-per-task 6] [--env-ms 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.evaluation.doubles import ReachEnv, ReachEvaluator  # noqa: E402
from vlm4vla.evaluation.plugin import register_evaluator  # noqa: E402
from vlm4vla.evaluation.runner import episode_seed  # noqa: E402
from vlm4vla.evaluation.sweep import SweepSettings, load_policy, resolve_checkpoints, run_sweep  # noqa: E402


class BusyReachEnv(ReachEnv):
    busy_seconds = 0.0

    def step(self, action: np.ndarray) -> np.ndarray:
        end = time.perf_counter() + self.busy_seconds
        while time.perf_counter() < end:
            pass
        return super().step(action)


class RecordingReach(ReachEvaluator):
    """`reach` whose env is `BusyReachEnv` and which logs the actions it executed."""

    name = "reach-bench"

    def make_env(self, spec, *, seed):  # noqa: ANN001, ANN201
        return BusyReachEnv(spec["start"], seed)

    def run_episode(self, env, policy, spec, *, max_steps=None):  # noqa: ANN001, ANN201
        actions: list[list[float]] = []
        act = policy.act

        def logging_act(image, text):  # noqa: ANN001, ANN202
            a = act(image, text)
            actions.append(a.tolist())
            return a

        policy.act = logging_act
        record = super().run_episode(env, policy, spec, max_steps=max_steps)
        record["actions"] = actions
        return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes-per-task", type=int, default=6)
    p.add_argument("--env-ms", type=float, default=5.0, help="busy work per env step in part 2")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    register_evaluator(RecordingReach)
    from vlm4vla.backbones import get_backbone
    from vlm4vla.policy.policy import VLAPolicy

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        VLAPolicy(get_backbone("qwen2.5-vl").tiny(), chunk_size=4).save_pretrained(tmp / "step=000001")
        checkpoints = resolve_checkpoints(tmp / "step=000001")
        predict = load_policy(checkpoints[0])
        evaluator = RecordingReach()

        # ---- 1. overhead, one worker, cheap env
        BusyReachEnv.busy_seconds = 0.0
        print(
            "mode    steps  harness ms/step  policy ms/step  raw env ms/step  harness overhead ms/step (% of env+policy); setup+reports s"
        )
        for mode in ("full", "single"):
            settings = SweepSettings(modes=[mode], episodes_per_task=args.episodes_per_task, workers=1)
            start = time.perf_counter()
            result = run_sweep(evaluator, checkpoints, tmp / f"o-{mode}", settings, policy_loader=lambda c: predict)
            total = time.perf_counter() - start
            records = result.cells[0]
            import json

            lines = [
                json.loads(x)
                for x in (tmp / f"o-{mode}" / "step=000001" / mode / "episodes.jsonl").read_text().splitlines()
            ]
            steps = sum(r["steps"] for r in lines)
            start = time.perf_counter()
            for r in lines:  # raw env loop with the same actions
                env = BusyReachEnv(next(s for s in evaluator.episodes(r["task"]) if s["episode_id"] == r["episode_id"])["start"],
                                   episode_seed(0, r["task"], r["episode_id"]))  # fmt: skip
                env.observe()
                for a in r["actions"]:
                    env.step(np.asarray(a, np.float32))
            raw = time.perf_counter() - start
            policy = result.stats.policy_seconds
            run = result.stats.wall_seconds  # the episode loop; setup and reports excluded
            overhead = run - policy - raw
            print(f"{mode:7s} {steps:5d}  {1e3 * run / steps:15.3f}  {1e3 * policy / steps:14.3f}  "
                  f"{1e3 * raw / steps:15.4f}  {1e3 * overhead / steps:10.3f} ({100 * overhead / (policy + raw):.1f}%)  {total - run:.2f}")  # fmt: skip
            del records

        # ---- 2. throughput, 1 vs 2 workers, CPU-bound env
        BusyReachEnv.busy_seconds = args.env_ms / 1e3
        print(f"\nenv-steps/s with a {args.env_ms:g} ms CPU-bound env step (mode single: one query per step)")
        for workers in (1, 2):
            settings = SweepSettings(modes=["single"], episodes_per_task=args.episodes_per_task, workers=workers)
            result = run_sweep(evaluator, checkpoints, tmp / f"w{workers}", settings, policy_loader=lambda c: predict)
            s = result.stats
            print(f"workers={workers}: {s.env_steps / s.wall_seconds:7.1f} env-steps/s  ({s.env_steps} steps, "
                  f"{s.forwards} forwards, batch sizes {dict(sorted(s.batch_sizes.items()))}, "
                  f"policy {100 * s.policy_seconds / s.wall_seconds:.0f}% of wall)")  # fmt: skip


if __name__ == "__main__":
    main()

"""Evaluation at scale: env workers, torchrun ranks, and what a full paper sweep costs on GPUs.

1. **Workers** — env-steps/s of ``vlm4vla-eval`` with N = 1, 2, 4 env workers (batched forwards,
   ``--max-batch N``) against the released evaluation's pattern: one env, a batch-1 query per
   policy call, episodes one after another (a plain loop, no harness). Same CPU-bound env double
   (``--env-ms`` of busy work per step), same tiny random policy, same episodes, mode ``single``.
2. **Ranks** — ``torchrun --nproc-per-node 2`` against 1 rank, on CPU (gloo): the episode loop's
   time is a launch's wall time minus that of an immediate re-run (start-up, planning and reports
   only, every episode already stored). Scaling efficiency = speed-up / ranks.
3. **Estimate** — per-GPU policy throughput for each preset's real-size model (built on the meta
   device) from its forward FLOPs at 50% of an A100's bf16 dense peak (312 TFLOP/s), and the wall
   time of the full LIBERO-10 and CALVIN sweeps (10 checkpoints × 3 chunk modes) on one and on
   four 8-GPU nodes, from simulator step times measured here (LIBERO: a real env on this CPU;
   CALVIN: ``--calvin-step-ms``, measured with the calvin_env clone, or measured here when
   calvin_env is importable).

    python benchmarks/eval_scaling.py [--part workers|ranks|estimate|all] [--env-ms 5]

As a plugin module (``--plugin-module benchmarks.eval_scaling``) it registers ``reach-busy``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.evaluation.doubles import ReachEnv, ReachEvaluator  # noqa: E402
from vlm4vla.evaluation.plugin import checked_action, register_evaluator  # noqa: E402
from vlm4vla.evaluation.runner import episode_seed  # noqa: E402

A100_BF16_PEAK = 312e12
EFFICIENCY = 0.5
ENV_MS = float(os.environ.get("VLM4VLA_BENCH_ENV_MS", "5"))  # the ranks part passes it to its children


class BusyReachEnv(ReachEnv):
    """`ReachEnv` whose step spins the CPU for ``ENV_MS`` (a simulator is CPU-bound)."""

    def step(self, action: np.ndarray) -> np.ndarray:
        end = time.perf_counter() + ENV_MS / 1e3
        while time.perf_counter() < end:
            pass
        return super().step(action)


class BusyReach(ReachEvaluator):
    name = "reach-busy"
    EPISODES = 16

    def make_env(self, spec, *, seed):  # noqa: ANN001, ANN201
        return BusyReachEnv(spec["start"], seed)


register_evaluator(BusyReach)


def _tiny_bundle(directory: Path) -> Path:
    from vlm4vla.evaluation.testing import write_tiny_bundle

    return write_tiny_bundle(directory, gripper="signed")


def _released_pattern(evaluator: BusyReach, predict, episodes: int) -> tuple[int, float]:  # noqa: ANN001
    """One env, batch-1 queries, episodes in sequence: the released evaluation's loop."""
    steps = 0
    start = time.perf_counter()
    for task in evaluator.tasks():
        for spec in evaluator.episodes(task, episodes_per_task=episodes):
            env = BusyReachEnv(spec["start"], episode_seed(0, task, spec["episode_id"]))
            obs = env.observe()
            for _ in range(evaluator.horizon):
                action = checked_action(predict([obs], [task])[0][0], evaluator.name)
                obs = env.step(action)
                steps += 1
                if evaluator._reached(task, env.x):
                    break
    return steps, time.perf_counter() - start


def part_workers(args: argparse.Namespace) -> None:
    from vlm4vla.evaluation.sweep import SweepSettings, load_policy, resolve_checkpoints, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = resolve_checkpoints(_tiny_bundle(Path(tmp) / "step=000001"))
        predict = load_policy(checkpoints[0])
        evaluator = BusyReach()
        steps, seconds = _released_pattern(evaluator, predict, args.episodes_per_task)
        base = steps / seconds
        print(f"\n1. env-steps/s, {args.env_ms:g} ms CPU-bound env step, tiny policy, mode single")
        print("| pattern | env-steps/s | × released | forwards | batch sizes |")
        print("|---|---:|---:|---:|---|")
        print(f"| released (1 env, batch 1, sequential) | {base:.1f} | 1.00 | {steps} | {{1: {steps}}} |")
        for workers in (1, 2, 4):
            settings = SweepSettings(
                modes=["single"], episodes_per_task=args.episodes_per_task, workers=workers, max_batch=workers
            )
            result = run_sweep(
                evaluator, checkpoints, Path(tmp) / f"w{workers}", settings, policy_loader=lambda c: predict
            )
            s = result.stats
            rate = s.env_steps / s.wall_seconds
            print(f"| vlm4vla-eval --workers {workers} | {rate:.1f} | {rate / base:.2f} | {s.forwards} | "
                  f"{dict(sorted(s.batch_sizes.items()))} |")  # fmt: skip


def part_ranks(args: argparse.Namespace) -> None:
    from vlm4vla.evaluation.testing import launch_environment, torchrun_eval_command

    with tempfile.TemporaryDirectory() as tmp:
        bundle = _tiny_bundle(Path(tmp) / "bundle")
        cli = [
            "--suite", "reach-busy", "--plugin-module", "benchmarks.eval_scaling", "--ckpt", str(bundle),
            "--modes", "single,half", "--episodes-per-task", str(args.episodes_per_task), "--device", "cpu", "--quiet",
        ]  # fmt: skip
        env = launch_environment(PYTHONPATH=str(REPO), VLM4VLA_BENCH_ENV_MS=str(args.env_ms))
        loops = {}
        for ranks in (1, 2):
            command = torchrun_eval_command(ranks, [*cli, "--out", str(Path(tmp) / f"r{ranks}")])
            walls = []
            for _ in range(2):  # the first run does the work, the second only starts, plans and reports
                start = time.perf_counter()
                subprocess.run(command, env=env, check=True, capture_output=True, cwd=REPO)
                walls.append(time.perf_counter() - start)
            loops[ranks] = walls[0] - walls[1]
            print(
                f"torchrun {ranks} rank(s): wall {walls[0]:.1f} s, start-up {walls[1]:.1f} s, episodes {loops[ranks]:.1f} s"
            )
        speedup = loops[1] / loops[2]
        print(f"\n2. torchrun 2 ranks vs 1 on CPU: speed-up {speedup:.2f}×, scaling efficiency {speedup / 2:.0%}")


# ---------------------------------------------------------------------- part 3: estimate
def forward_flops(recipe: Path) -> tuple[str, float, int, int, int]:
    """(backbone, FLOPs per sample of one policy query, LLM tokens, vision tokens, chunk size).

    2 FLOPs per active weight per token through the decoder layers and vision blocks, plus the
    attention products (4·s²·h per layer). MoE experts count at ``top_k / experts``. The LM head
    never runs (only the ActionQuery's hidden state is read); the action head is negligible.
    """
    from vlm4vla.policy.config import VLAConfig
    from vlm4vla.policy.policy import VLAPolicy
    from vlm4vla.training.memory import estimate_memory

    est = estimate_memory(recipe)
    config = VLAConfig.from_dict(est.config)
    policy = VLAPolicy.from_config(config.replace(weights="meta"))
    backbone = policy.backbone
    text = backbone.config.get_text_config()
    experts = getattr(text, "num_experts", None) or getattr(text, "n_routed_experts", None)
    top_k = getattr(text, "num_experts_per_tok", None)
    share = (top_k / experts) if experts and top_k else 1.0
    active = 0.0
    for layer in backbone.decoder_layers:
        for name, p in layer.named_parameters():
            active += p.numel() * (share if "experts" in name and "shared" not in name else 1.0)
    vision = sum(p.numel() for block in backbone.vision_blocks for p in block.parameters())
    s_llm, s_vis = est.sequence_length, est.vision_tokens
    hidden, vis_hidden = backbone.hidden_size, int(backbone.config.vision_config.hidden_size)
    flops = 2 * active * s_llm + 2 * vision * s_vis
    flops += (
        4 * len(backbone.decoder_layers) * s_llm**2 * hidden + 4 * len(backbone.vision_blocks) * s_vis**2 * vis_hidden
    )
    return config.backbone, flops, s_llm, s_vis, config.chunk_size


def libero_step_ms(steps: int = 60) -> float | None:
    """ms per step of a real LIBERO-10 env at 128² (one process, this CPU), or None without LIBERO."""
    import importlib.util

    if importlib.util.find_spec("libero") is None:
        return None
    from vlm4vla_libero.evaluator import LIBERO10_TASKS, LiberoEvaluator

    evaluator = LiberoEvaluator()
    spec = {**evaluator.episodes(LIBERO10_TASKS[0], episodes_per_task=1)[0], "task": LIBERO10_TASKS[0], "bundle": {}}
    env = evaluator.make_env(spec, seed=0)
    try:
        sim = env.sim
        sim.reset()
        action = np.zeros(7)
        action[-1] = -1.0
        sim.step(action)
        start = time.perf_counter()
        for _ in range(steps):
            sim.step(action)
        return 1e3 * (time.perf_counter() - start) / steps
    finally:
        evaluator.close_env(env)


def queries(mode: str, steps: int, chunk: int) -> int:
    per = {"full": chunk, "half": max(1, chunk // 2), "single": 1}[mode]
    return math.ceil(steps / per)


def part_estimate(args: argparse.Namespace) -> None:
    libero_ms = args.libero_step_ms or libero_step_ms()
    calvin_ms = args.calvin_step_ms
    print(f"\n3. simulator step on this CPU (one core each): LIBERO {libero_ms and f'{libero_ms:.1f} ms' or 'n/a'}, "
          f"CALVIN {calvin_ms and f'{calvin_ms:.1f} ms' or 'n/a (--calvin-step-ms)'}")  # fmt: skip
    suites = {
        # episodes per cell, policy steps per episode at most (wait steps count as env steps only)
        "libero10": {"episodes": 500, "steps": 520, "extra": 10, "ms": libero_ms},
        "calvin": {"episodes": 1000, "steps": 5 * 360, "extra": 0, "ms": calvin_ms},
    }
    peak = EFFICIENCY * A100_BF16_PEAK
    print(f"Per GPU at {EFFICIENCY:.0%} of {A100_BF16_PEAK / 1e12:.0f} TFLOP/s; sweeps: 10 checkpoints × 3 modes, "
          f"every episode to its step limit (an upper bound: successes end early); {args.workers_per_node} env "
          "workers per 8-GPU node")  # fmt: skip
    print("| suite | preset | LLM / ViT tokens | GFLOP per query | queries/s per GPU | env steps | policy queries "
          "| 1 node (h) | 4 nodes (h) | policy alone, 1 node (h) | bound |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for suite, s in suites.items():
        for recipe in sorted((REPO / "recipes" / suite).glob("[!_]*.yaml")):
            if "pi0" in recipe.name:
                continue
            backbone, flops, s_llm, s_vis, chunk = forward_flops(recipe)
            per_gpu = peak / flops
            env_steps = 10 * 3 * s["episodes"] * (s["steps"] + s["extra"])
            n_queries = 10 * s["episodes"] * sum(queries(m, s["steps"], chunk) for m in ("full", "half", "single"))
            row = [suite, backbone, f"{s_llm} / {s_vis}", f"{flops / 1e9:.0f}", f"{per_gpu:.0f}", f"{env_steps:.2e}",
                   f"{n_queries:.2e}"]  # fmt: skip
            for nodes in (1, 4):
                policy_h = n_queries / (per_gpu * 8 * nodes) / 3600
                env_h = env_steps * (s["ms"] or 0) / 1e3 / (args.workers_per_node * nodes) / 3600 if s["ms"] else None
                total = max(policy_h, env_h or 0)
                row.append(f"{total:.1f}")
                bound = "env" if env_h and env_h > policy_h else "policy"
            row.append(f"{n_queries / (per_gpu * 8) / 3600:.1f}")
            row.append(bound if s["ms"] else "policy (no sim time)")
            print("| " + " | ".join(row) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("workers", "ranks", "estimate", "all"), default="all")
    p.add_argument("--episodes-per-task", type=int, default=8)
    p.add_argument("--env-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers-per-node", type=int, default=64, help="env worker processes per 8-GPU node (part 3)")
    p.add_argument("--libero-step-ms", type=float, default=None, help="skip measuring LIBERO's step (part 3)")
    p.add_argument("--calvin-step-ms", type=float, default=None, help="CALVIN's step time, measured with calvin_env")
    args = p.parse_args()
    global ENV_MS
    ENV_MS = args.env_ms
    os.environ["VLM4VLA_BENCH_ENV_MS"] = str(args.env_ms)  # spawned env workers read it at import
    import torch

    torch.set_num_threads(args.threads)
    if args.part in ("workers", "all"):
        part_workers(args)
    if args.part in ("ranks", "all"):
        part_ranks(args)
    if args.part in ("estimate", "all"):
        part_estimate(args)
    print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()

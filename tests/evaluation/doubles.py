"""Deterministic test-double suites for the evaluation harness (no simulator).

Importing this module registers them in-process; the CLI loads it with
``--plugin-module tests.evaluation.doubles``.

* ``reach`` — a 1-D reach: the env image encodes the position, each action moves it by
  ``action[0]``; success once the position passes the task's goal. Outcomes depend on the
  actions, so checkpoints and chunk modes give different results.
* ``reach-slow`` — the same with a 50 ms step (for the kill/resume test).
* ``reach-chain`` — CALVIN-style: three chained subtasks per sequence sharing one env; the
  policy queue is reset at every subtask; a record per sequence with per-subtask detail and
  ``avg_len`` as the headline metric.
* ``reach-8d`` / ``reach-maxchunk2`` — incompatible with a 7-d, chunk-4 policy.
* ``reach-nosim`` / ``reach-nosim-worker`` — the simulator package is missing (detected by
  ``check_available`` / only when the env is built in the worker).
* ``reach-sim`` — a well-behaved plugin whose "simulator" (``SIMULATOR``) is probed in
  ``check_available`` and imported only in ``make_env``; `tests/evaluation/test_testing_kit.py`
  runs the plugin contract on it.
* ``reach-shared`` — ``reach`` with options (``gain``) and two protocols: ``released`` shares
  one env per task whose texture is redrawn from the env's RNG at every episode, so an episode's
  outcome depends on the episodes the env ran before it (as LIBERO's fixture placement does).
* ``reach-modules`` — ``reach`` whose records list the heavy modules loaded in the process that
  ran the episode (a spawned worker with ``--workers 2``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlm4vla.evaluation import Evaluator, SimulatorImportError, register_evaluator
from vlm4vla.evaluation.plugin import checked_action


class ReachEnv:
    """x moves by ``action[0]`` each step; the observation paints x into a 32×32 image."""

    def __init__(self, start: float, seed: int, step_delay: float = 0.0) -> None:
        self.x = float(start)
        self.rng = np.random.default_rng(seed)
        self.texture = self.rng.integers(0, 64, size=(32, 32, 3), dtype=np.uint8)
        self.step_delay = step_delay
        self.closed = False

    def observe(self) -> np.ndarray:
        image = self.texture.copy()
        column = int(np.clip((self.x + 2.0) / 4.0 * 31, 0, 31))
        image[:, column, :] = 255
        return image

    def step(self, action: np.ndarray) -> np.ndarray:
        if self.step_delay:
            time.sleep(self.step_delay)
        self.x += float(np.clip(action[0], -1.0, 1.0))
        return self.observe()

    def close(self) -> None:
        self.closed = True


class ReachEvaluator(Evaluator):
    name = "reach"
    install_hint = "it is a test double; nothing to install"
    horizon = 12
    step_delay = 0.0
    GOALS = {"reach left": -0.3, "reach right": 0.3}
    EPISODES = 6

    def tasks(self) -> list[str]:
        return list(self.GOALS)

    def episodes(self, task: str, *, episodes_per_task: int | None = None) -> list[dict[str, Any]]:
        n = self.EPISODES if episodes_per_task is None else min(episodes_per_task, self.EPISODES)
        return [{"episode_id": k, "start": round(0.1 * (k - self.EPISODES / 2), 2)} for k in range(n)]

    def make_env(self, spec: Mapping[str, Any], *, seed: int) -> ReachEnv:
        return ReachEnv(spec["start"], seed, self.step_delay)

    def _reached(self, task: str, x: float) -> bool:
        goal = self.GOALS[task]
        return x <= goal if goal < 0 else x >= goal

    def run_episode(self, env: ReachEnv, policy: Any, spec: Mapping[str, Any], *, max_steps: int | None = None) -> dict:
        task = spec["task"]
        limit = self.horizon if max_steps is None else min(max_steps, self.horizon)
        obs = env.observe()
        for t in range(limit):
            # As the real plugins do: a NaN or wrong-sized action is one clear error.
            obs = env.step(checked_action(policy.act(obs, task), self.name))
            if self._reached(task, env.x):
                return {"success": True, "steps": t + 1, "final_x": round(env.x, 3)}
        return {"success": False, "steps": limit, "final_x": round(env.x, 3)}


class SlowReachEvaluator(ReachEvaluator):
    name = "reach-slow"
    step_delay = 0.05


class ChainReachEvaluator(ReachEvaluator):
    """Three chained subtasks per sequence on one env, stopping at the first failure."""

    name = "reach-chain"
    headline_metric = "avg_len"
    horizon = 6
    SEQUENCES = {"seq": [["reach right", "reach left", "reach right"], ["reach left", "reach right", "reach left"]]}

    def tasks(self) -> list[str]:
        return list(self.SEQUENCES)

    def episodes(self, task: str, *, episodes_per_task: int | None = None) -> list[dict[str, Any]]:
        seqs = self.SEQUENCES[task][:episodes_per_task]
        return [{"episode_id": k, "start": 0.0, "subtasks": s} for k, s in enumerate(seqs)]

    def run_episode(self, env: ReachEnv, policy: Any, spec: Mapping[str, Any], *, max_steps: int | None = None) -> dict:
        limit = self.horizon if max_steps is None else min(max_steps, self.horizon)
        subtasks: list[dict[str, Any]] = []
        for sub in spec["subtasks"]:
            policy.reset()  # a new instruction: never execute actions predicted for the previous one
            env.x = 0.0
            obs, success, steps = env.observe(), False, 0
            for steps in range(1, limit + 1):  # noqa: B007  (read after the loop)
                obs = env.step(policy.act(obs, sub))
                if self._reached(sub, env.x):
                    success = True
                    break
            subtasks.append({"task": sub, "success": success, "steps": steps})
            if not success:
                break
        completed = sum(s["success"] for s in subtasks)
        return {
            "success": completed == len(spec["subtasks"]),
            "steps": sum(s["steps"] for s in subtasks),
            "completed": completed,
            "subtasks": subtasks,
        }

    def metric(self, records: Sequence[Mapping[str, Any]]) -> float:
        return float(np.mean([r["completed"] for r in records])) if records else float("nan")

    def summarize(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        summary = super().summarize(records)
        for i in range(1, 4):
            summary[f"chain_{i}"] = float(np.mean([r["completed"] >= i for r in records])) if records else float("nan")
        return summary


class EightDimReachEvaluator(ReachEvaluator):
    name = "reach-8d"
    action_dim = 8


class MaxChunk2ReachEvaluator(ReachEvaluator):
    name = "reach-maxchunk2"
    max_chunk_size = 2


class NoSimReachEvaluator(ReachEvaluator):
    name = "reach-nosim"
    install_hint = "pip install fakesim"

    def check_available(self) -> None:
        raise SimulatorImportError(f"the fakesim package is not installed; {self.install_hint}")


class NoSimInWorkerReachEvaluator(ReachEvaluator):
    name = "reach-nosim-worker"
    install_hint = "pip install fakesim"

    def make_env(self, spec: Mapping[str, Any], *, seed: int) -> ReachEnv:
        try:
            import fakesim_not_installed  # noqa: F401
        except ImportError as err:
            raise SimulatorImportError(f"{err}; {self.install_hint}") from err
        return super().make_env(spec, seed=seed)


class SimulatedReachEvaluator(ReachEvaluator):
    name = "reach-sim"
    install_hint = "pip install wave-sim (a test double: the stdlib's wave module plays the simulator)"
    SIMULATOR = "wave"  # any module nothing else imports

    def check_available(self) -> None:
        if importlib.util.find_spec(self.SIMULATOR) is None:
            raise SimulatorImportError(f"{self.SIMULATOR} is not installed; {self.install_hint}")

    def make_env(self, spec: Mapping[str, Any], *, seed: int) -> ReachEnv:
        try:
            importlib.import_module(self.SIMULATOR)
        except ImportError as err:
            raise SimulatorImportError(f"{self.SIMULATOR} failed to import ({err}); {self.install_hint}") from err
        return super().make_env(spec, seed=seed)


class ModulesReachEvaluator(ReachEvaluator):
    name = "reach-modules"
    HEAVY = ("lightning", "pytorch_lightning", "vlm4vla.data", "vlm4vla.training", "torch", "transformers")

    def run_episode(self, env: ReachEnv, policy: Any, spec: Mapping[str, Any], *, max_steps: int | None = None) -> dict:
        record = super().run_episode(env, policy, spec, max_steps=max_steps)
        heavy = [h for h in self.HEAVY if any(m == h or m.startswith(h + ".") for m in list(sys.modules))]
        return {**record, "heavy_modules": heavy}


class SharedReachEvaluator(ReachEvaluator):
    """``reach`` with a ``gain`` option and an env shared by a task's episodes under ``released``."""

    name = "reach-shared"

    def __init__(self, *, protocol: str = "standard", gain: float = 1.0) -> None:
        super().__init__(protocol=protocol)
        self.gain = float(gain)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "gain": self.gain}

    def simulator_versions(self) -> dict[str, Any]:
        return {"reach-sim": "1.0"}

    def protocol_modes(self) -> tuple[str, ...]:
        return ("full", "half") if self.protocol == "released" else super().protocol_modes()

    def env_group(self, spec: Mapping[str, Any]) -> str | None:
        return str(spec["task"]) if self.protocol == "released" else None

    def make_env(self, spec: Mapping[str, Any], *, seed: int) -> ReachEnv:
        env = super().make_env(spec, seed=seed)
        env.episodes_run = 1
        return env

    def reuse_env(self, env: ReachEnv, spec: Mapping[str, Any]) -> ReachEnv:
        env.x = float(spec["start"])
        env.texture = env.rng.integers(0, 64, size=(32, 32, 3), dtype=np.uint8)  # the RNG stream goes on
        env.episodes_run += 1
        return env

    def run_episode(self, env: ReachEnv, policy: Any, spec: Mapping[str, Any], *, max_steps: int | None = None) -> dict:
        gained = _Gain(policy, self.gain)
        record = super().run_episode(env, gained, spec, max_steps=max_steps)
        return {**record, "episodes_in_env": env.episodes_run, "texture_sum": int(env.texture.sum())}


class _Gain:
    def __init__(self, policy: Any, gain: float) -> None:
        self.policy, self.gain = policy, gain

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        action = np.array(self.policy.act(image, instruction), dtype=np.float64)
        action[0] *= self.gain
        return action


for _cls in (
    ReachEvaluator,
    SharedReachEvaluator,
    SlowReachEvaluator,
    ChainReachEvaluator,
    EightDimReachEvaluator,
    MaxChunk2ReachEvaluator,
    NoSimReachEvaluator,
    NoSimInWorkerReachEvaluator,
    SimulatedReachEvaluator,
    ModulesReachEvaluator,
):
    register_evaluator(_cls)

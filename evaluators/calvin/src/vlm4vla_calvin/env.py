"""Building calvin_env's simulator and task oracle (imported lazily, in the worker process).

Two ways to configure the env, both through calvin_env's hydra configs:

* default: the groups of calvin_env's own ``conf/`` directory (next to the installed package,
  i.e. an editable install from a clone) — ``env/play_table_env`` with
  ``scene=calvin_scene_D``, ``robot=panda_longer_finger`` and the static (200²) and gripper (84²)
  cameras of ``cameras/static_and_gripper`` — the composition ``config_data_collection`` gives
  with those overrides, assembled here without hydra's composition (which would also need the VR,
  recorder and colorlog groups);
* ``$VLM4VLA_CALVIN_CONFIG``: a dataset's ``validation/.hydra/merged_config.yaml`` (or the
  dataset / validation directory holding it), as ``calvin_env.envs.play_table_env.get_env``
  reads it; cameras other than static and gripper are dropped (the tactile sensor is unused).

Always ``show_gui=False``, ``use_vr=False``, ``use_scene_info=True`` (the task oracle needs the
scene info). Rendering: EGL when pybullet's ``eglRenderer`` plugin and ``libEGL`` are present,
else pybullet's CPU TinyRenderer; ``$VLM4VLA_CALVIN_EGL=0/1`` forces the choice.

The success oracle is calvin_env's ``Tasks`` instantiated from ``conf/tasks/new_playtable_tasks.yaml``.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vlm4vla.errors import ConfigError, MissingFileError
from vlm4vla.evaluation.plugin import SimulatorImportError
from vlm4vla.mapping import deep_merge

INSTALL_HINT = (
    "install calvin_env from source: git clone --recursive https://github.com/mees/calvin_env && "
    "pip install -e calvin_env/tacto && pip install -e calvin_env (see evaluators/calvin/README.md)"
)
CONFIG_ENV = "VLM4VLA_CALVIN_CONFIG"
EGL_ENV = "VLM4VLA_CALVIN_EGL"
SCENE = "calvin_scene_D"
ROBOT = "panda_longer_finger"
CAMERAS = ("static", "gripper")
TASKS_CONFIG = ("tasks", "new_playtable_tasks.yaml")
MERGED_CONFIG = (".hydra", "merged_config.yaml")


# -------------------------------------------------------------------- locating calvin_env
def calvin_env_installed() -> bool:
    """Whether a ``calvin_env`` package is importable (found without importing it)."""
    return importlib.util.find_spec("calvin_env") is not None


def calvin_conf_dir() -> Path:
    """calvin_env's hydra ``conf/`` directory (the clone's root holds it next to the package)."""
    spec = importlib.util.find_spec("calvin_env")
    if spec is None:
        raise SimulatorImportError(f"calvin_env is not installed; {INSTALL_HINT}")
    for location in spec.submodule_search_locations or []:
        conf = Path(location).resolve().parent / "conf"
        if (conf / "env" / "play_table_env.yaml").is_file():
            return conf
    raise SimulatorImportError(
        f"calvin_env ({list(spec.submodule_search_locations or [])}) has no conf/ directory next to it, so it "
        f"was not installed editable from its clone; {INSTALL_HINT}"
    )


def resolve_dataset_config(path: str | os.PathLike[str]) -> Path:
    """The ``merged_config.yaml`` for ``path``: the file itself, or a validation / dataset directory."""
    root = Path(path).expanduser()
    candidates = [root, root.joinpath(*MERGED_CONFIG), root.joinpath("validation", *MERGED_CONFIG)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingFileError(
        f"${CONFIG_ENV}={path}: no merged_config.yaml there (looked at {', '.join(str(c) for c in candidates)})"
    )


def use_egl_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """``$VLM4VLA_CALVIN_EGL`` if set, else whether EGL rendering is available."""
    environ = os.environ if environ is None else environ
    text = environ.get(EGL_ENV, "").strip().lower()
    if text in ("1", "true", "yes", "egl"):
        return True
    if text in ("0", "false", "no", "tiny", "tinyrenderer"):
        return False
    if text:
        raise ConfigError(f"${EGL_ENV}: expected 1 (EGL) or 0 (TinyRenderer), got {text!r}")
    return egl_available()


def egl_available() -> bool:
    """pybullet's EGL renderer plugin and a libEGL are both present."""
    try:
        plugin = importlib.util.find_spec("eglRenderer") is not None
    except (ImportError, ValueError):
        plugin = False
    return plugin and ctypes.util.find_library("EGL") is not None


# -------------------------------------------------------------------- config assembly
def load_group(conf_dir: Path, group: str, name: str) -> dict[str, Any]:
    """One hydra config ``group/name.yaml`` with its same-group ``defaults`` merged underneath."""
    path = Path(conf_dir) / group / f"{name}.yaml"
    if not path.is_file():
        raise SimulatorImportError(f"calvin_env config {path} is missing; {INSTALL_HINT}")
    data = yaml.safe_load(path.read_text()) or {}
    merged: dict[str, Any] = {}
    for base in data.pop("defaults", []) or []:
        if base == "_self_":
            continue
        if not isinstance(base, str):
            raise ConfigError(f"{path}: unsupported defaults entry {base!r}")
        merged = deep_merge(merged, load_group(conf_dir, group, base))
    return deep_merge(merged, data)


def env_config(
    conf_dir: Path, *, use_egl: bool, seed: int = 0, scene: str = SCENE, robot: str = ROBOT
) -> dict[str, Any]:
    """The root config whose ``env`` node instantiates ``PlayTableSimEnv`` (interpolations unresolved)."""
    env = load_group(conf_dir, "env", "play_table_env")
    env.update(show_gui=False, use_vr=False, use_scene_info=True, use_egl=bool(use_egl), seed=int(seed))
    return {
        "seed": int(seed),
        "use_vr": False,
        "data_path": "data",
        "cameras": {name: load_group(conf_dir, "cameras/cameras", name) for name in CAMERAS},
        "robot": load_group(conf_dir, "robot", robot),
        "scene": load_group(conf_dir, "scene", scene),
        "env": env,
    }


# -------------------------------------------------------------------- building
def _import_hydra() -> tuple[Any, Any]:
    try:
        import calvin_env.envs.play_table_env  # noqa: F401  (fails early when pybullet & co are missing)
        import hydra.utils
        from omegaconf import OmegaConf
    except ImportError as err:
        raise SimulatorImportError(f"calvin_env failed to import ({err}); {INSTALL_HINT}") from err
    return hydra.utils, OmegaConf


def make_sim(*, seed: int, config_path: str | None = None, use_egl: bool | None = None) -> Any:
    """A ``PlayTableSimEnv``: scene D, static + gripper cameras, relative actions, no GUI."""
    hydra_utils, OmegaConf = _import_hydra()
    egl = use_egl_from_env() if use_egl is None else bool(use_egl)
    if config_path:
        root = OmegaConf.load(resolve_dataset_config(config_path))
        for name in list(root.cameras.keys()):
            if name not in CAMERAS:
                del root.cameras[name]
    else:
        root = OmegaConf.create(env_config(calvin_conf_dir(), use_egl=egl, seed=seed))
    overrides = {"show_gui": False, "use_vr": False, "use_scene_info": True, "use_egl": egl, "seed": int(seed)}
    try:
        return hydra_utils.instantiate(root.env, **overrides)
    except SystemExit as err:  # calvin_env calls sys.exit() when the EGL plugin fails to load
        raise SimulatorImportError(
            f"calvin_env could not start its EGL renderer; set {EGL_ENV}=0 to render with pybullet's TinyRenderer"
        ) from err


def make_task_oracle() -> Any:
    """calvin_env's ``Tasks`` from its ``new_playtable_tasks`` config (the benchmark's success check)."""
    hydra_utils, OmegaConf = _import_hydra()
    path = calvin_conf_dir().joinpath(*TASKS_CONFIG)
    if not path.is_file():
        raise SimulatorImportError(f"calvin_env's task config {path} is missing; {INSTALL_HINT}")
    return hydra_utils.instantiate(OmegaConf.load(path))

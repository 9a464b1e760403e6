"""Building calvin_env's simulator and task oracle (imported lazily, in the worker process).

Two ways to configure the env, both through calvin_env's hydra configs:

* default: the groups of calvin_env's own ``conf/`` directory (next to the installed package,
  i.e. an editable install from a clone) — ``env/play_table_env`` with
  ``scene=calvin_scene_D``, ``robot=panda_longer_finger`` and the static (200²) and gripper (84²)
  cameras of ``cameras/static_and_gripper`` — the composition ``config_data_collection`` gives
  with those overrides, assembled here without hydra's composition (which would also need the VR,
  recorder and colorlog groups);
* ``--suite-option config_path=…``: a dataset's ``validation/.hydra/merged_config.yaml`` (or the
  dataset / validation directory holding it), as ``calvin_env.envs.play_table_env.get_env``
  reads it; cameras other than static and gripper are dropped (the tactile sensor is unused).

Always ``show_gui=False``, ``use_vr=False``, ``use_scene_info=True`` (the task oracle needs the
scene info). Rendering: EGL when pybullet's ``eglRenderer`` plugin and ``libEGL`` are present,
else pybullet's CPU TinyRenderer; ``--suite-option use_egl=true|false`` forces the choice.

Version: the benchmark (mees/calvin) pins calvin_env at `BENCHMARK_COMMIT`, where
``Button.reset`` always turns the button off; later commits set it from the LED, which makes
``turn_off_led`` (185 of the 1000 sequences) easier. `calvin_env_version` reads the installed
clone's commit (recorded with every result) and whether it is the benchmark's.

The success oracle is calvin_env's ``Tasks`` instantiated from ``conf/tasks/new_playtable_tasks.yaml``.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from vlm4vla.errors import ConfigError, MissingFileError
from vlm4vla.evaluation.plugin import SimulatorImportError
from vlm4vla.mapping import deep_merge

INSTALL_HINT = (
    "install calvin_env from source: git clone https://github.com/mees/calvin_env && "
    "git -C calvin_env checkout 1431a46 && pip install -e calvin_env (see evaluators/calvin/README.md)"
)
BENCHMARK_COMMIT = "1431a46"
"""The calvin_env commit mees/calvin pins (its ``calvin_env`` submodule): the benchmark's simulator."""
SCENE = "calvin_scene_D"
ROBOT = "panda_longer_finger"
CAMERAS = ("static", "gripper")
TASKS_CONFIG = ("tasks", "new_playtable_tasks.yaml")
MERGED_CONFIG = (".hydra", "merged_config.yaml")


# -------------------------------------------------------------------- locating calvin_env
def calvin_env_installed() -> bool:
    """Whether a ``calvin_env`` package is importable (found without importing it)."""
    return importlib.util.find_spec("calvin_env") is not None


def editable_clone() -> Path | None:
    """The clone an installed ``calvin_env`` distribution was installed editable from (PEP 610's
    ``direct_url.json``), or None (not installed, or not from a local directory)."""
    try:
        text = importlib.metadata.distribution("calvin_env").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        url = json.loads(text or "{}").get("url", "")
    except ValueError:
        return None
    if not url.startswith("file://"):
        return None
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).resolve()


def _imported_location() -> Path | None:
    """The directory ``import calvin_env`` would load (found without importing it)."""
    spec = importlib.util.find_spec("calvin_env")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def calvin_env_clone() -> Path:
    """The root of the calvin_env clone in use (it holds ``conf/`` and ``data/`` beside the package).

    The installed distribution says where the editable install came from; if ``import calvin_env``
    would load another directory — the clone's top folder when the current directory holds the
    clone, as the README's layout does — that is said in one line instead of a misleading
    "not installed editable".
    """
    imported = _imported_location()
    if imported is None:
        raise SimulatorImportError(f"calvin_env is not installed; {INSTALL_HINT}")
    clone = editable_clone()
    if clone is not None:
        package = clone / "calvin_env"
        if imported != package.resolve() and (package / "__init__.py").is_file():
            raise SimulatorImportError(
                f"`import calvin_env` would load the directory {imported} (on sys.path, e.g. the current directory "
                f"holding the clone), which shadows the package {package} installed editable; run vlm4vla-eval "
                "from another directory"
            )
        if (clone / "conf" / "env" / "play_table_env.yaml").is_file():
            return clone
    if (imported.parent / "conf" / "env" / "play_table_env.yaml").is_file():
        return imported.parent
    raise SimulatorImportError(
        f"calvin_env ({imported}) has no conf/ directory next to it, so it was not installed editable from its "
        f"clone; {INSTALL_HINT}"
    )


def calvin_conf_dir() -> Path:
    """calvin_env's hydra ``conf/`` directory (the clone's root holds it next to the package)."""
    return calvin_env_clone() / "conf"


def calvin_env_version() -> dict[str, Any]:
    """The installed calvin_env's commit and whether it is the benchmark's (`BENCHMARK_COMMIT`):
    ``{"calvin_env_commit": sha or None, "calvin_env_matches_benchmark": bool or None}``."""
    try:
        clone = calvin_env_clone()
    except SimulatorImportError:
        return {"calvin_env_commit": None, "calvin_env_matches_benchmark": None}
    try:
        out = subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        out = None
    commit = out.stdout.strip() if out is not None and out.returncode == 0 else None
    return {
        "calvin_env_commit": commit,
        "calvin_env_matches_benchmark": None if commit is None else commit.startswith(BENCHMARK_COMMIT),
    }


def resolve_dataset_config(path: str | os.PathLike[str]) -> Path:
    """The ``merged_config.yaml`` for ``path``: the file itself, or a validation / dataset directory."""
    root = Path(path).expanduser()
    candidates = [root, root.joinpath(*MERGED_CONFIG), root.joinpath("validation", *MERGED_CONFIG)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingFileError(
        f"config_path={path}: no merged_config.yaml there (looked at {', '.join(str(c) for c in candidates)})"
    )


def resolve_use_egl(use_egl: bool | None) -> bool:
    """The ``use_egl`` option if set, else whether EGL rendering is available."""
    if use_egl is None:
        return egl_available()
    if not isinstance(use_egl, bool):
        raise ConfigError(f"use_egl: expected true (EGL) or false (TinyRenderer), got {use_egl!r}")
    return use_egl


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
    hook = sys.excepthook
    try:
        import calvin_env.envs.play_table_env  # noqa: F401  (fails early when pybullet & co are missing)
        import hydra.utils
        from omegaconf import OmegaConf
    except ImportError as err:
        raise SimulatorImportError(f"calvin_env failed to import ({err}); {INSTALL_HINT}") from err
    finally:
        # calvin_env 1431a46 installs rich's traceback hook (with locals) at import: keep ours.
        sys.excepthook = hook
    return hydra.utils, OmegaConf


def make_sim(*, seed: int, config_path: str | None = None, use_egl: bool | None = None) -> Any:
    """A ``PlayTableSimEnv``: scene D, static + gripper cameras, relative actions, no GUI."""
    hydra_utils, OmegaConf = _import_hydra()
    egl = resolve_use_egl(use_egl)
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
            "calvin_env could not start its EGL renderer; pass --suite-option use_egl=false to render with "
            "pybullet's TinyRenderer"
        ) from err


def make_task_oracle() -> Any:
    """calvin_env's ``Tasks`` from its ``new_playtable_tasks`` config (the benchmark's success check)."""
    hydra_utils, OmegaConf = _import_hydra()
    path = calvin_conf_dir().joinpath(*TASKS_CONFIG)
    if not path.is_file():
        raise SimulatorImportError(f"calvin_env's task config {path} is missing; {INSTALL_HINT}")
    return hydra_utils.instantiate(OmegaConf.load(path))

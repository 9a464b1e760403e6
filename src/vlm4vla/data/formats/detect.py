"""Pick an episode format by what is on disk, and open its reader."""

from __future__ import annotations

import importlib
from pathlib import Path

from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader

EPISODE_FORMATS = ("hdf5", "lerobot", "rlds")


def _is_rlds_dir(path: Path) -> bool:
    return (path / "features.json").is_file() and any(path.glob("*.tfrecord*"))


def _rlds_dirs_below(root: Path) -> list[Path]:
    """RLDS directories two levels down (``<data_dir>/<name>/<version>/``, the TFDS layout)."""
    if not root.is_dir():
        return []
    found = [
        version
        for name in sorted(root.iterdir())
        if name.is_dir()
        for version in sorted(name.iterdir(), key=_version_key)
        if version.is_dir() and _is_rlds_dir(version)
    ]
    return found


def _below_hint(root: Path) -> str:
    found = _rlds_dirs_below(root)
    if not found:
        return ""
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"; found the RLDS dataset {found[0]}{more} below it: pass that directory or its parent"


def _version_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.name.split("."))


def resolve_rlds_root(root: str | Path) -> Path:
    """``root`` itself if it holds ``features.json`` + tfrecords, else its newest version
    sub-directory that does (``bridge_dataset/`` → ``bridge_dataset/1.0.0/``)."""
    root = Path(root)
    if _is_rlds_dir(root):
        return root
    versions = (
        sorted((p for p in root.iterdir() if p.is_dir() and _is_rlds_dir(p)), key=_version_key)
        if root.is_dir()
        else []
    )
    if versions:
        return versions[-1]
    raise DatasetFormatError(f"{root}: no RLDS dataset (features.json + *.tfrecord-*) found{_below_hint(root)}")


def detect_format(root: str | Path, allowed: tuple[str, ...] = EPISODE_FORMATS) -> str:
    """``"hdf5"`` (``*.hdf5`` files), ``"lerobot"`` (``meta/info.json``) or ``"rlds"``
    (``features.json`` + tfrecords, also one version directory down)."""
    root = Path(root)
    if not root.exists():
        raise DatasetFormatError(f"{root}: dataset directory not found")
    found: list[str] = []
    if root.is_file() and root.suffix == ".hdf5":
        found.append("hdf5")
    elif root.is_dir():
        if (root / "meta" / "info.json").is_file():
            found.append("lerobot")
        try:
            resolve_rlds_root(root)
            found.append("rlds")
        except DatasetFormatError:
            pass
        if any(root.glob("*.hdf5")):
            found.append("hdf5")
    usable = [f for f in found if f in allowed]
    if not usable:
        looked = {"hdf5": "*.hdf5", "lerobot": "meta/info.json", "rlds": "features.json + *.tfrecord-*"}
        wanted = ", ".join(looked[f] for f in allowed)
        hint = _below_hint(root) if "rlds" in allowed else ""
        raise DatasetFormatError(f"{root}: no dataset found (looked for {wanted}){hint}")
    if len(usable) > 1:
        raise DatasetFormatError(
            f"{root}: several formats found ({', '.join(usable)}); pass format= explicitly"
        )
    return usable[0]


def open_episode_reader(
    fmt: str,
    root: str | Path,
    *,
    split: str = "train",
    image_key: str | None = None,
    action_key: str | None = None,
    instruction_key: str | None = None,
) -> EpisodeReader:
    """Open the reader of ``fmt`` (LeRobot and RLDS readers are imported only when used).

    ``None`` keys take the format's defaults. ``instruction_key`` exists for RLDS only: LIBERO
    HDF5 keeps the instruction in ``problem_info`` and LeRobot in ``meta/tasks`` via ``task_index``.
    """
    root = Path(root)
    if instruction_key is not None and fmt != "rlds":
        raise ValueError(
            f"instruction_key={instruction_key!r} applies to the rlds format only; the {fmt} format "
            "has no instruction feature to choose"
        )
    if fmt == "hdf5":
        from vlm4vla.data.formats.hdf5_libero import LiberoHDF5Reader

        return LiberoHDF5Reader(root, image_key=image_key or "agentview_rgb", action_key=action_key or "actions")
    if fmt == "lerobot":
        module = _import_reader_module("lerobot")
        return module.LeRobotReader(root, image_key=image_key, action_key=action_key or "action")
    if fmt == "rlds":
        module = _import_reader_module("rlds")
        return module.RLDSReader(
            resolve_rlds_root(root),
            split=split,
            image_key=image_key,
            action_key=action_key,
            instruction_key=instruction_key,
        )
    raise ValueError(f"unknown dataset format {fmt!r}; expected one of {EPISODE_FORMATS}")


def rlds_has_split(root: str | Path, split: str) -> bool:
    module = _import_reader_module("rlds")
    return bool(module.has_split(resolve_rlds_root(root), split))


def _import_reader_module(name: str):
    try:
        return importlib.import_module(f"vlm4vla.data.formats.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"vlm4vla.data.formats.{name}":
            raise DatasetFormatError(
                f"the {name} reader (vlm4vla.data.formats.{name}) is not available"
            ) from err
        raise


__all__ = ["EPISODE_FORMATS", "detect_format", "open_episode_reader", "resolve_rlds_root", "rlds_has_split"]

"""The TFDS directory layout: ``features.json``, ``dataset_info.json``, the shard files of a
split, and ``<data_dir>/<name>/<version>/`` directories.

Shards are named by the split's ``filepathTemplate`` in ``dataset_info.json``: TFDS writes
``<name>-<split>.tfrecord-00000-of-0000N``, the ``rlds`` EpisodeWriter / envlogger
``<name>-<split>.tfrecord-00000``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm4vla.data.formats.base import DatasetFormatError, one_line, read_json


# -- features.json --------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSpec:
    """One leaf of ``features.json``, keyed by its flattened name (``steps/observation/state``)."""

    kind: str  # "image", "tensor" (Tensor and Scalar), "text"
    shape: tuple[int, ...]  # per step for ``steps/`` fields; -1 for unknown dimensions
    dtype: str
    encoding: str = ""  # image encoding format ("jpeg", "png")
    in_steps: bool = False


def _shape(node: dict[str, Any]) -> tuple[int, ...]:
    dims = node.get("shape", {}).get("dimensions", [])
    return tuple(int(d) for d in dims)


def parse_features_json(path: Path) -> dict[str, FeatureSpec]:
    """Flatten a TFDS ``features.json`` (FeaturesDict / Dataset / Tensor / Image / Text)."""
    tree = read_json(path, "features.json")
    specs: dict[str, FeatureSpec] = {}

    def walk(node: Any, prefix: str, in_steps: bool) -> None:
        if not isinstance(node, dict):
            raise DatasetFormatError(f"{path}: field '{prefix or '<root>'}' is not a feature object")
        if "featuresDict" in node:
            children = node["featuresDict"].get("features", {})
            for name, child in children.items():
                walk(child, f"{prefix}/{name}" if prefix else name, in_steps)
        elif "sequence" in node:  # tfds.features.Dataset (RLDS ``steps``) or Sequence
            walk(node["sequence"].get("feature", {}), prefix, True)
        elif "image" in node:
            image = node["image"]
            specs[prefix] = FeatureSpec(
                "image",
                _shape(image),
                image.get("dtype", "uint8"),
                image.get("encodingFormat", "png"),
                in_steps,
            )
        elif "tensor" in node:
            tensor = node["tensor"]
            specs[prefix] = FeatureSpec("tensor", _shape(tensor), tensor.get("dtype", "float32"), "", in_steps)
        elif "text" in node:
            specs[prefix] = FeatureSpec("text", (), "string", "", in_steps)
        else:
            known = ", ".join(sorted(k for k in node if k not in ("pythonClassName", "description")))
            raise DatasetFormatError(f"{path}: field '{prefix or '<root>'}' has an unsupported feature type ({known})")

    walk(tree, "", False)
    if not specs:
        raise DatasetFormatError(f"{path}: no features declared")
    return specs


# -- split files ------------------------------------------------------------------------------
def read_dataset_info(root: Path) -> dict[str, Any]:
    path = root / "dataset_info.json"
    info = read_json(path, "dataset_info.json")
    if not isinstance(info, dict) or not info.get("name"):
        raise DatasetFormatError(f"{path}: missing field 'name'")
    return info


_SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})$")
_MIN_SHARD_DIGITS = 5  # TFDS pads shard numbers to max(5, digits of the shard count)


def _file_format(info: dict[str, Any]) -> str:
    return str(info.get("fileFormat") or "tfrecord").lower()  # TFDS's default when absent


def _declared_split(info: dict[str, Any], split: str) -> dict[str, Any] | None:
    return next((s for s in info.get("splits", []) if isinstance(s, dict) and s.get("name") == split), None)


def _template_files(root: Path, info: dict[str, Any], split: str) -> list[Path] | None:
    """Shard paths as TFDS names them from ``filepathTemplate`` and ``shardLengths``
    (``{DATASET}``, ``{SPLIT}``, ``{FILEFORMAT}``, ``{SHARD_INDEX}``, ``{NUM_SHARDS}``,
    ``{SHARD_X_OF_Y}``), or None when ``dataset_info.json`` does not declare them."""
    declared = _declared_split(info, split)
    if not declared or not declared.get("filepathTemplate") or "shardLengths" not in declared:
        return None
    template, count = str(declared["filepathTemplate"]), len(declared["shardLengths"])
    digits = max(len(str(count)), _MIN_SHARD_DIGITS)
    total = f"{count:0{digits}d}"
    values = {"DATASET": info["name"], "SPLIT": split, "FILEFORMAT": _file_format(info)}
    files = []
    for shard in range(count):
        index = f"{shard:0{digits}d}"
        try:
            name = template.format(**values, SHARD_INDEX=index, NUM_SHARDS=total, SHARD_X_OF_Y=f"{index}-of-{total}")
        except (KeyError, IndexError, ValueError) as err:
            raise DatasetFormatError(
                f"{root / 'dataset_info.json'}: field 'splits[{split}].filepathTemplate' is {template!r}, "
                f"expected TFDS variables {{DATASET}}, {{SPLIT}}, {{FILEFORMAT}}, {{SHARD_INDEX}}, "
                f"{{NUM_SHARDS}}, {{SHARD_X_OF_Y}} ({one_line(err)})"
            ) from err
        files.append(root / name)
    return files


def split_files(root: Path, info: dict[str, Any], split: str) -> tuple[list[Path], list[int] | None]:
    """Shard files of ``split`` in shard order, and their declared record counts if known.

    The files ``dataset_info.json`` names (``filepathTemplate`` × ``shardLengths``, as TFDS
    reads them) when they exist; else ``<name>-<split>.tfrecord-NNNNN-of-NNNNN`` by glob.
    """
    name = info["name"]
    if _file_format(info) != "tfrecord":
        raise DatasetFormatError(
            f"{root / 'dataset_info.json'}: field 'fileFormat' is {info.get('fileFormat')!r}, expected 'tfrecord'"
        )
    declared = _declared_split(info, split)
    lengths = [int(n) for n in declared["shardLengths"]] if declared and "shardLengths" in declared else None
    named = _template_files(root, info, split)
    if named is not None:
        present = [f.is_file() for f in named]
        if all(present):
            return named, lengths
        if any(present):
            missing = [i for i, ok in enumerate(present) if not ok]
            raise DatasetFormatError(
                f"{root}: split '{split}' is missing shard(s) {missing} of {len(named)} "
                f"({named[missing[0]].name} named by dataset_info.json 'filepathTemplate')"
            )
        # None of them: the files were renamed or the template hand-written; try the glob.
    files = sorted(root.glob(f"{name}-{split}.tfrecord-*-of-*"))
    files = [f for f in files if _SHARD_RE.search(f.name)]
    if files:
        total = int(_SHARD_RE.search(files[0].name).group(2))
        numbers = [int(_SHARD_RE.search(f.name).group(1)) for f in files]
        if numbers != list(range(total)):
            missing = sorted(set(range(total)) - set(numbers))
            raise DatasetFormatError(
                f"{root}: split '{split}' is missing shard(s) {missing} of {total} "
                f"({name}-{split}.tfrecord-NNNNN-of-{total:05d})"
            )
        if lengths is not None and len(lengths) != total:
            raise DatasetFormatError(
                f"{root / 'dataset_info.json'}: field 'splits[{split}].shardLengths' lists {len(lengths)} "
                f"shards but {total} files exist"
            )
    return files, lengths


def expected_shards(root: Path, info: dict[str, Any], split: str) -> str:
    """What the shards of ``split`` would be called, for the "no shards" message."""
    named = _template_files(root, info, split)
    if named:
        return f"{named[0].name}, ... from dataset_info.json 'filepathTemplate'"
    return f"{info['name']}-{split}.tfrecord-*-of-*"


def has_split(root: str | Path, split: str) -> bool:
    """Whether the TFDS directory ``root`` holds tfrecord shards for ``split``."""
    root = Path(root)
    try:
        info = read_dataset_info(root)
    except DatasetFormatError:
        return False
    return bool(split_files(root, info, split)[0])


# -- version directories ----------------------------------------------------------------------
def _is_rlds_dir(path: Path) -> bool:
    return (path / "features.json").is_file() and any(path.glob("*.tfrecord*"))


def _version_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.name.split("."))


def _rlds_dirs_below(root: Path) -> list[Path]:
    """RLDS directories two levels down (``<data_dir>/<name>/<version>/``, the TFDS layout)."""
    if not root.is_dir():
        return []
    return [
        version
        for name in sorted(root.iterdir())
        if name.is_dir()
        for version in sorted(name.iterdir(), key=_version_key)
        if version.is_dir() and _is_rlds_dir(version)
    ]


def below_hint(root: Path) -> str:
    """Where RLDS datasets are below ``root``, for "not found" messages ("" if none)."""
    found = _rlds_dirs_below(root)
    if not found:
        return ""
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"; found the RLDS dataset {found[0]}{more} below it: pass that directory or its parent"


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
    raise DatasetFormatError(f"{root}: no RLDS dataset (features.json + *.tfrecord-*) found{below_hint(root)}")


__all__ = [
    "FeatureSpec",
    "below_hint",
    "expected_shards",
    "has_split",
    "parse_features_json",
    "read_dataset_info",
    "resolve_rlds_root",
    "split_files",
]

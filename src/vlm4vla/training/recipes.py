"""Recipes: LightningCLI YAML files with two additions.

* ``extends: other.yaml`` — the recipe is deep-merged over another one (relative paths are
  resolved next to the file), so an ablation states only what it changes;
* packaged recipes: ``libero10/qwen3-vl-2b`` (no such file in the working directory) names
  the recipe shipped in the package (``vlm4vla/recipes``, the repository's ``recipes/``);
* ``data_root`` — where datasets live. Relative ``data.init_args.root`` paths are joined to it.
  ``$VLM4VLA_DATA_ROOT`` overrides it, so one variable points every recipe at a cluster's
  dataset directory; without either it is ``./data``.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vlm4vla.errors import ConfigError
from vlm4vla.mapping import deep_merge

DATA_ROOT_ENV = "VLM4VLA_DATA_ROOT"
# Package data (src/vlm4vla/recipes links to the repository's recipes/), so wheels carry them.
RECIPES_DIR = Path(str(importlib.resources.files("vlm4vla") / "recipes")).resolve()


class RecipeError(ConfigError):
    """A recipe that cannot be read; the message names the file and the key."""


def _read(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    if path in chain:
        raise RecipeError(f"{path}: 'extends' forms a cycle ({' -> '.join(map(str, (*chain, path)))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(f"{path}: 'extends' must be a path to another recipe")
    return deep_merge(_read((path.parent / parent).resolve(), (*chain, path)), data)


def resolve_recipe(path: str | os.PathLike) -> Path:
    """A recipe file: ``path`` itself, else the packaged recipe of that name (``.yaml`` optional)."""
    given = Path(path)
    if given.is_file() or given.is_absolute():
        return given.resolve()
    for candidate in (RECIPES_DIR / given, RECIPES_DIR / f"{given}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    raise RecipeError(
        f"{path}: no such recipe file, nor a packaged recipe of that name (e.g. libero10/qwen3-vl-2b; "
        f"see {RECIPES_DIR})"
    )


def load_recipe(path: str | os.PathLike, *, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The recipe at ``path`` (or the packaged one of that name) with ``extends`` merged and
    data paths resolved."""
    environ = os.environ if environ is None else environ
    recipe = _read(resolve_recipe(path), ())
    data_root = environ.get(DATA_ROOT_ENV) or recipe.pop("data_root", None) or "data"
    recipe.pop("data_root", None)
    init_args = recipe.get("data", {}).get("init_args", {}) if isinstance(recipe.get("data"), dict) else {}
    root = init_args.get("root")
    if isinstance(root, str) and not os.path.isabs(root):
        init_args["root"] = os.path.abspath(os.path.join(data_root, root))
    return recipe


DATAMODULES = ("vlm4vla.data.CalvinDataModule", "vlm4vla.data.LiberoDataModule", "vlm4vla.data.BridgeDataModule")


def validate_recipe(recipe: Mapping[str, Any], source: str) -> None:
    """Check the names a recipe refers to (backbone, datamodule class) before anything is built."""
    import importlib

    import lightning.pytorch as pl

    model = recipe.get("model") or {}
    backbone = model.get("backbone")
    if isinstance(backbone, str):
        if backbone.startswith("tiny:"):
            from vlm4vla.backbones import get_backbone

            family = backbone.removeprefix("tiny:").partition("/")[0]
            try:
                get_backbone(family)
            except ValueError as err:
                raise RecipeError(f"{source}: model.backbone: {err}") from None
        else:
            from vlm4vla.backbones.presets import get_preset

            try:
                get_preset(backbone)
            except ValueError as err:
                raise RecipeError(f"{source}: model.backbone: {err}") from None
    data = recipe.get("data")
    init_args = data.get("init_args") if isinstance(data, Mapping) else None
    for linked in ("chunk_size", "image_size"):
        if isinstance(init_args, Mapping) and linked in init_args:
            raise RecipeError(
                f"{source}: data.init_args.{linked}: set model.{linked} only (the datamodule's follows it)"
            )
    class_path = data.get("class_path") if isinstance(data, Mapping) else None
    if isinstance(class_path, str):
        module_name, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except ModuleNotFoundError as err:
            # Only a module the recipe names is "not found"; a broken import inside it is a bug.
            if not module_name or err.name is None or not module_name.startswith(err.name):
                raise
            cls = None
        except (AttributeError, ValueError):
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, pl.LightningDataModule)):
            raise RecipeError(
                f"{source}: data.class_path {class_path!r} is not a LightningDataModule; "
                f"the library's datamodules are {', '.join(DATAMODULES)}"
            )


def key_source(recipes: list[str], key: str) -> str | None:
    """The recipe file that sets the dotted ``key`` (the last ``--config`` wins, and in an
    ``extends`` chain the most derived file); ``None`` if no file sets it."""
    for recipe in reversed(recipes):
        path: Path | None = Path(recipe).resolve()
        seen: set[Path] = set()
        while path is not None and path.is_file() and path not in seen:
            seen.add(path)
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                break
            node: Any = data
            for part in key.split("."):
                node = node.get(part, _MISSING) if isinstance(node, Mapping) else _MISSING
            if node is not _MISSING:
                return str(path)
            parent = data.get("extends") if isinstance(data, Mapping) else None
            path = (path.parent / parent).resolve() if isinstance(parent, str) else None
    return None


_MISSING = object()


def list_recipes(directory: str | os.PathLike = RECIPES_DIR) -> list[Path]:
    """Every runnable recipe under ``directory`` (files starting with ``_`` are bases)."""
    return sorted(p for p in Path(directory).rglob("*.yaml") if not p.name.startswith("_"))

"""``vlm4vla fit|validate|test``: LightningCLI over `VLAModule` and the datamodules.

LightningCLI replaces the ``lightning run model`` command removed in Lightning 2.x: the recipe
YAML instantiates the Trainer (strategy, devices, nodes, precision, callbacks), the model
and the datamodule, with ``--print_config`` and dotted overrides (``--trainer.max_steps=100``).
Each ``--config`` recipe is first expanded by `vlm4vla.training.recipes.load_recipe`
(``extends``, ``data_root``).
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
import tempfile
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import LightningCLI

from vlm4vla.mapping import deep_merge
from vlm4vla.training.module import VLAModule
from vlm4vla.training.recipes import RecipeError, key_source, load_recipe, validate_recipe

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")


class VLACLI(LightningCLI):
    """LightningCLI where the recipe, not a checkpoint's saved hyperparameters, defines the run.

    Stock LightningCLI silently replaces the model configuration by the one stored in
    ``--ckpt_path``; here a checkpoint whose model differs from the recipe's is refused with
    one clear error before anything is built.
    """

    recipe_files: list[str] = []  # the --config files as given (for error messages)

    def add_arguments_to_parser(self, parser: Any) -> None:
        # The chunk and image sizes are given once, on the model; the datamodule's follow them.
        parser.link_arguments("model.chunk_size", "data.init_args.chunk_size")
        parser.link_arguments("model.image_size", "data.init_args.image_size")

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc"):
            return
        self._check_checkpoint(Path(ckpt_path), self.config[subcommand]["model"])

    @staticmethod
    def _check_checkpoint(path: Path, model: Any) -> None:
        """Refuse an unreadable checkpoint or one of another model, in one line, before anything is built."""
        from vlm4vla.training.export import checkpoint_hyperparameters

        saved = checkpoint_hyperparameters(path)
        VLAModule.check_compatible(saved, {key: model.get(key) for key in saved})

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":
            # Stock Lightning trains from scratch when there is no last checkpoint and prints a
            # traceback for a corrupt one; resolve it here and run the explicit path's checks.
            kwargs["ckpt_path"] = str(self._last_checkpoint())
            self._check_checkpoint(Path(kwargs["ckpt_path"]), self.config[subcommand]["model"])
        return kwargs

    def _last_checkpoint(self) -> Path:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks = [cb for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        found = {Path(p) for cb in callbacks for p in cb._find_last_checkpoints(self.trainer)}
        if not found:
            where = ", ".join(sorted({str(cb._ModelCheckpoint__resolve_ckpt_dir(self.trainer)) for cb in callbacks}))
            raise RecipeError(
                f"--ckpt_path last: no last checkpoint in {where or 'the run (it has no checkpoint callback)'}; "
                "omit --ckpt_path to start a new run"
            )
        return max(found, key=lambda p: p.stat().st_mtime)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise RecipeError(self._describe_parse_error(err)) from None

    def _describe_parse_error(self, err: ArgumentError) -> str:
        """jsonargparse's error (after ~66 lines of usage) → one line: file, key, closest valid key."""
        message = str(err)
        argv = sys.argv[1:]
        subcommand = argv[0] if argv and argv[0] in LIGHTNING_SUBCOMMANDS else "fit"
        key, problem = None, message.strip().splitlines()[0]
        if match := re.search(r"does not accept option '([^']+)'", message):
            key, problem = match.group(1), "not a valid key"
        elif match := re.search(r"unrecognized arguments: --([^=\s]+)", message):
            key, problem = match.group(1), "not a valid key"
        elif match := re.search(r"Option '([^']+)' is not accepted", message):
            key, problem = f"data.init_args.{match.group(1)}", "not a valid key"
        else:
            keys = re.findall(r'Parser key "([^"]+)":\s*\n\s*(.+)', message)
            if keys:
                outer = re.match(r'Parser key "([^"]+)"', message)
                key, problem = keys[-1][0], keys[-1][1].strip()
                if outer and outer.group(1) == "data" and key != "data":
                    key = f"data.init_args.{key}"
        if key is None:
            return f"recipe: {problem}"
        source = "command line" if any(a.split("=")[0] == f"--{key}" for a in argv) else None
        source = source or key_source(self.recipe_files, key) or "recipe"
        line = f"{source}: {key}: {problem}"
        if problem == "not a valid key":
            close = difflib.get_close_matches(key, self._valid_keys(subcommand, key), n=1, cutoff=0.6)
            line += f"; did you mean {close[0]}?" if close else ""
        return line

    def _valid_keys(self, subcommand: str, key: str) -> list[str]:
        if key.startswith("data.init_args."):
            cls = _recipe_data_class(self.recipe_files)
            names = set()
            for klass in inspect.getmro(cls) if cls is not None else ():
                init = klass.__dict__.get("__init__")
                if init is not None:
                    names |= {
                        n
                        for n, p in inspect.signature(init).parameters.items()
                        if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                    }
            return [f"data.init_args.{n}" for n in sorted(names)]
        parser = self._subcommand_parsers.get(subcommand)
        return [a.dest for a in getattr(parser, "_actions", []) if isinstance(a.dest, str)]


def _recipe_data_class(recipes: list[str]) -> type | None:
    merged: dict = {}
    for recipe in recipes:
        try:
            merged = deep_merge(merged, load_recipe(recipe))
        except RecipeError:
            return None
    class_path = (merged.get("data") or {}).get("class_path")
    if not isinstance(class_path, str):
        return None
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


_CHECKED_OVERRIDES = {
    "--model.backbone": ("model", "backbone"),
    "--data.class_path": ("data", "class_path"),
    "--data.init_args.chunk_size": ("data", "init_args", "chunk_size"),
    "--data.init_args.image_size": ("data", "init_args", "image_size"),
}


def _overrides(argv: list[str]) -> dict:
    """The command-line values of the names `validate_recipe` checks (``--key=value`` or ``--key value``)."""
    found: dict = {}
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if key in _CHECKED_OVERRIDES:
            if not sep:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            *sections, name = _CHECKED_OVERRIDES[key]
            node = found
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = value
    return found


def _expand_configs(argv: list[str], workdir: Path, sources: list[str] | None = None) -> list[str]:
    """``--config`` recipes expanded (``extends``, ``data_root``) into ``workdir``; their paths
    are appended to ``sources``."""
    out: list[str] = []
    merged: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg == "--config" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        recipe = load_recipe(value)
        if sources is not None:
            sources.append(value)
        merged = deep_merge(merged, recipe)
        expanded = workdir / f"recipe{len(out)}.yaml"
        expanded.write_text(yaml.safe_dump(recipe, sort_keys=False))
        out += ["--config", str(expanded)]
    validate_recipe(deep_merge(merged, _overrides(argv)), "recipe")
    return out


def run(argv: Sequence[str]) -> int:
    # LightningCLI reads sys.argv, and DDP/FSDP launchers re-run it in the worker processes:
    # both must see the expanded recipes, which live until the run ends.
    with tempfile.TemporaryDirectory(prefix="vlm4vla-recipe-") as tmp:
        saved = sys.argv
        VLACLI.recipe_files = []
        sys.argv = [saved[0], *_expand_configs(list(argv), Path(tmp), VLACLI.recipe_files)]
        try:
            VLACLI(
                VLAModule,
                pl.LightningDataModule,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"exit_on_error": False},  # errors become one line (RecipeError), not usage
            )
        finally:
            sys.argv = saved
    return 0

"""``vlm4vla fit|validate|test``: LightningCLI over `VLAModule` and the datamodules.

LightningCLI replaces the ``lightning run model`` command removed in Lightning 2.x: the recipe
YAML instantiates the Trainer (strategy, devices, nodes, precision, callbacks), the model
and the datamodule, with ``--print_config`` and dotted overrides (``--trainer.max_steps=100``).
Each ``--config`` recipe is first expanded by `vlm4vla.training.recipes.load_recipe`
(``extends``, ``data_root``).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import LightningCLI

from vlm4vla.training.module import VLAModule
from vlm4vla.training.recipes import deep_merge, load_recipe, validate_recipe

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")


class VLACLI(LightningCLI):
    """LightningCLI where the recipe, not a checkpoint's saved hyperparameters, defines the run.

    Stock LightningCLI silently replaces the model configuration by the one stored in
    ``--ckpt_path``; here a checkpoint whose model differs from the recipe's is refused with
    one clear error before anything is built.
    """

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc"):
            return
        from vlm4vla.training.export import checkpoint_hyperparameters

        saved = checkpoint_hyperparameters(Path(ckpt_path))
        model = self.config[subcommand]["model"]
        VLAModule.check_compatible(saved, {key: model.get(key) for key in saved})


_CHECKED_OVERRIDES = {"--model.backbone": ("model", "backbone"), "--data.class_path": ("data", "class_path")}


def _overrides(argv: list[str]) -> dict:
    """The command-line values of the names `validate_recipe` checks (``--key=value`` or ``--key value``)."""
    found: dict = {}
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if key in _CHECKED_OVERRIDES:
            if not sep:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            section, name = _CHECKED_OVERRIDES[key]
            found.setdefault(section, {})[name] = value
    return found


def _expand_configs(argv: list[str], workdir: Path) -> list[str]:
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
        sys.argv = [saved[0], *_expand_configs(list(argv), Path(tmp))]
        try:
            VLACLI(
                VLAModule,
                pl.LightningDataModule,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
            )
        finally:
            sys.argv = saved
    return 0

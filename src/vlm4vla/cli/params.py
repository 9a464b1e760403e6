"""``vlm4vla params``: parameter counts of a preset, or per-GPU memory estimates of recipes.

* ``--preset NAME`` — backbone, head, ActionQuery and trainable parameter counts. The preset
  is built on the meta device (no memory, no download), wrapped in a `VLAPolicy` with the
  requested chunk size and training switches, and counted. With every preset and
  ``--chunk 10`` this reproduces the paper's Table 9.
* ``--memory --recipe PATH`` — estimated per-GPU memory of training a recipe under FSDP2
  (parameters, gradients, AdamW states, gathered layers, activations); see
  `vlm4vla.training.memory`. ``--markdown`` prints the README's table.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vlm4vla.backbones.presets import get_preset, list_presets
from vlm4vla.errors import ConfigError
from vlm4vla.policy.config import LoraSettings, VLAConfig
from vlm4vla.policy.policy import VLAPolicy

if TYPE_CHECKING:
    from vlm4vla.training.memory import MemoryEstimate

# Options of the parameter counts; a recipe sets these itself, so --memory rejects them.
COUNT_OPTIONS = {"chunk": 10, "freeze_vision": False, "freeze_embeddings": False, "freeze_llm": False, "lora_rank": 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--preset",
        action="append",
        metavar="NAME",
        help=f"preset name, repeatable, or 'all' ({', '.join(list_presets())})",
    )
    what.add_argument(
        "--recipe",
        action="append",
        metavar="PATH",
        help="recipe file for --memory, repeatable, or 'all' (every runnable recipe under recipes/)",
    )
    counts = parser.add_argument_group("parameter counts (--preset)")
    counts.add_argument("--chunk", type=int, default=10, metavar="N", help="action chunk size N (default 10)")
    counts.add_argument("--freeze-vision", action="store_true", help="freeze the vision encoder")
    counts.add_argument("--freeze-embeddings", action="store_true", help="freeze the word embeddings")
    counts.add_argument("--freeze-llm", action="store_true", help="freeze the whole language model")
    counts.add_argument("--lora-rank", type=int, default=0, metavar="R", help="LoRA rank (0 = full fine-tuning)")
    memory = parser.add_argument_group("memory estimate (--memory --recipe)")
    memory.add_argument(
        "--memory",
        action="store_true",
        help="estimate per-GPU training memory under FSDP2 (A100-80GB) for each --recipe",
    )
    memory.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="N",
        help="total GPUs (default: the recipe's trainer.devices × trainer.num_nodes)",
    )
    memory.add_argument(
        "--fused-attention",
        action="store_true",
        help="assume an attention kernel that stores no s×s scores (drops the 5·a·s² term)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (with --memory)")


# ---------------------------------------------------------------------- parameter counts
def count_preset(
    name: str,
    *,
    chunk_size: int = 10,
    freeze_vision: bool = False,
    freeze_embeddings: bool = False,
    freeze_llm: bool = False,
    lora_rank: int = 0,
) -> dict[str, int | str]:
    """Parameter counts of a preset's policy built on the meta device."""
    get_preset(name)
    config = VLAConfig(
        backbone=name,
        chunk_size=chunk_size,
        freeze_vision_encoder=freeze_vision,
        freeze_word_embeddings=freeze_embeddings,
        freeze_llm=freeze_llm,
        lora=LoraSettings.for_rank(lora_rank),
    )
    return {"preset": name, **count_parameters(config)}


def count_parameters(config: VLAConfig) -> dict[str, int]:
    """Hidden size and parameter counts of the policy ``config`` describes, built on meta."""
    policy = VLAPolicy.from_config(config.replace(weights="meta"))
    return {"hidden_size": policy.backbone.hidden_size, **policy.parameter_counts()}


def _format_millions(n: int) -> str:
    return f"{n / 1e6:,.2f}M"


def _print_table(table, min_width: int = 132) -> None:
    from rich.console import Console

    console = Console()
    Console(width=max(console.width, min_width)).print(table)


def _run_counts(args: argparse.Namespace) -> int:
    names = list_presets() if "all" in args.preset else args.preset
    for name in names:
        get_preset(name)  # fail on an unknown name before building anything
    if args.chunk < 1:
        raise ConfigError(f"--chunk: expected a positive integer, got {args.chunk}")
    rows = [
        count_preset(
            name,
            chunk_size=args.chunk,
            freeze_vision=args.freeze_vision,
            freeze_embeddings=args.freeze_embeddings,
            freeze_llm=args.freeze_llm,
            lora_rank=args.lora_rank,
        )
        for name in names
    ]
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"VLA parameter counts (chunk N={args.chunk})")
    for column in ("preset", "H", "backbone", "head", "ActionQuery", "total", "trainable"):
        table.add_column(column, justify="left" if column == "preset" else "right")
    for row in rows:
        table.add_row(
            str(row["preset"]),
            str(row["hidden_size"]),
            f"{row['backbone_params']:,}",
            f"{row['head_params']:,}",
            f"{row['action_query_params']:,}",
            _format_millions(int(row["total_params"])),
            _format_millions(int(row["trainable_params"])),
        )
    _print_table(table)
    return 0


# ---------------------------------------------------------------------- memory
MEMORY_COLUMNS = (
    "recipe",
    "GPUs",
    "batch/GPU",
    "tokens LLM / ViT",
    "act. ckpt",
    "trainable",
    "params",
    "grads",
    "AdamW",
    "unsharded",
    "activations",
    "total",
    "fits 80 GB",
    "host RAM/rank before",
    "host RAM now (rank 0 / others)",
)


def memory_rows(estimates: Sequence[MemoryEstimate]) -> list[list[str]]:
    """One row of `MEMORY_COLUMNS` per `MemoryEstimate` (sizes in GiB)."""
    return [
        [
            e.recipe,
            str(e.world_size),
            str(e.micro_batch),
            f"{e.sequence_length} / {e.vision_tokens}",
            "yes" if e.activation_checkpointing else "no",
            _format_millions(e.trainable_params),
            f"{e.params_gb:.2f}",
            f"{e.grads_gb:.2f}",
            f"{e.optimizer_gb:.2f}",
            f"{e.unsharded_gb:.2f}",
            f"{e.activations_gb:.2f}",
            f"{e.total_gb:.2f}",
            "yes" if e.fits else "no",
            f"{e.host_before_gb:.1f}",
            f"{e.host_rank0_gb:.1f} / {e.host_others_gb:.2f}",
        ]
        for e in estimates
    ]


def memory_markdown(estimates: Sequence[MemoryEstimate]) -> str:
    """The estimates as a GitHub Markdown table (sizes in GiB per GPU)."""
    left = {"recipe"}
    header = "| " + " | ".join(MEMORY_COLUMNS) + " |"
    rule = "|" + "|".join(":---" if c in left else "---:" for c in MEMORY_COLUMNS) + "|"
    body = ["| " + " | ".join(row) + " |" for row in memory_rows(estimates)]
    return "\n".join([header, rule, *body])


def _recipe_paths(values: Sequence[str]) -> list[str | os.PathLike]:
    from vlm4vla.training.recipes import list_recipes

    return list_recipes() if "all" in values else list(values)


def _run_memory(args: argparse.Namespace) -> int:
    from vlm4vla.training.memory import estimate_memory, recipe_label
    from vlm4vla.training.recipes import load_recipe

    if args.json and args.markdown:
        raise ConfigError("--json and --markdown: choose one output format")
    if args.gpus is not None and args.gpus < 1:
        raise ConfigError(f"--gpus: expected a positive integer, got {args.gpus}")
    # Read every recipe first, so a bad path fails before any model is built.
    recipes = [(recipe_label(path), load_recipe(path)) for path in _recipe_paths(args.recipe)]
    estimates = [
        estimate_memory(recipe, gpus=args.gpus, name=label, attention_scores=not args.fused_attention)
        for label, recipe in recipes
    ]
    if args.json:
        rows = [e.to_dict() for e in estimates]
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
        return 0
    if args.markdown:
        print(memory_markdown(estimates))
        return 0
    from rich.table import Table

    table = Table(title="Estimated per-GPU training memory under FSDP2 (GiB; A100-80GB)")
    for column in MEMORY_COLUMNS:
        table.add_column(column, justify="left" if column == "recipe" else "right", no_wrap=True)
    for row in memory_rows(estimates):
        table.add_row(*row)
    _print_table(table, min_width=230)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.memory and args.recipe is None:
        raise ConfigError("--memory: estimates are per recipe; pass --recipe PATH (or --recipe all)")
    if args.recipe is not None and not args.memory:
        raise ConfigError("--recipe: only used with --memory")
    if args.markdown and not args.memory:
        raise ConfigError("--markdown: only used with --memory")
    if args.memory:
        for name, default in COUNT_OPTIONS.items():
            if getattr(args, name) != default:
                option = "--" + name.replace("_", "-")
                raise ConfigError(f"{option}: not used with --memory (the recipe sets the model and its switches)")
    return _run_memory(args) if args.memory else _run_counts(args)

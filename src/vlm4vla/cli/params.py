"""``vlm4vla params``: backbone, head, ActionQuery and trainable parameter counts of a preset.

The preset is built on the meta device (no memory, no download), wrapped in a `VLAPolicy`
with the requested chunk size and training switches, and counted. With every preset and
``--chunk 10`` this reproduces the paper's Table 9.
"""

from __future__ import annotations

import argparse
import json

from vlm4vla.backbones.presets import get_preset, list_presets
from vlm4vla.policy import LoraSettings, VLAPolicy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", action="append", required=True, metavar="NAME",
        help=f"preset name, repeatable, or 'all' ({', '.join(list_presets())})",
    )
    parser.add_argument("--chunk", type=int, default=10, metavar="N", help="action chunk size N (default 10)")
    parser.add_argument("--freeze-vision", action="store_true", help="freeze the vision encoder")
    parser.add_argument("--freeze-embeddings", action="store_true", help="freeze the word embeddings")
    parser.add_argument("--freeze-llm", action="store_true", help="freeze the whole language model")
    parser.add_argument("--lora-rank", type=int, default=0, metavar="R", help="LoRA rank (0 = full fine-tuning)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


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
    preset = get_preset(name)
    policy = VLAPolicy(preset.build("meta"), chunk_size=chunk_size)
    policy.configure_training(
        freeze_vision_encoder=freeze_vision,
        freeze_word_embeddings=freeze_embeddings,
        freeze_llm=freeze_llm,
        lora=LoraSettings(rank=lora_rank, alpha=2 * lora_rank) if lora_rank else None,
    )
    return {"preset": name, "hidden_size": policy.backbone.hidden_size, **policy.parameter_counts()}


def _format_millions(n: int) -> str:
    return f"{n / 1e6:,.2f}M"


def run(args: argparse.Namespace) -> int:
    names = list_presets() if "all" in args.preset else args.preset
    for name in names:
        get_preset(name)  # fail on an unknown name before building anything
    if args.chunk < 1:
        raise ValueError(f"--chunk: expected a positive integer, got {args.chunk}")
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
    from rich.console import Console
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
    console = Console()
    Console(width=max(console.width, 132)).print(table)
    return 0

"""``vlm4vla export CKPT OUT``: write the policy bundle of an existing Lightning checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a VLAModule checkpoint (.ckpt file or distributed-checkpoint directory)")
    parser.add_argument("output", help="the bundle directory to write (must not exist, unless --overwrite)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing policy bundle at OUTPUT (never a file or a non-bundle folder)",
    )


def run(args: argparse.Namespace) -> int:
    from vlm4vla.training.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.output, overwrite=args.overwrite)
    print(f"wrote policy bundle {path}")
    return 0

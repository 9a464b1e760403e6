"""``vlm4vla export CKPT OUT``: write the policy bundle of an existing Lightning checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a VLAModule checkpoint (.ckpt file or distributed-checkpoint directory)")
    parser.add_argument("output", help="the bundle directory to write")


def run(args: argparse.Namespace) -> int:
    from vlm4vla.training.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.output)
    print(f"wrote policy bundle {path}")
    return 0

"""The ``vlm4vla`` command: the library's subcommands in one entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vlm4vla.cli import params

# name → (module with add_arguments(parser) and run(args) -> int, one-line help)
SUBCOMMANDS = {
    "params": (params, "parameter counts of a preset built on the meta device (the paper's Table 9)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm4vla", description="Turn Hugging Face VLMs into VLA policies and benchmark them (VLM4VLA)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module, _ = SUBCOMMANDS[args.command]
    try:
        return module.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"vlm4vla {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

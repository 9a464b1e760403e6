"""The ``vlm4vla`` command: LightningCLI subcommands and the library's own, in one entry point.

* ``vlm4vla fit|validate|test --config recipe.yaml [--trainer.max_steps=100 …]`` — LightningCLI;
* ``vlm4vla params`` — parameter counts (the paper's Table 9) and memory estimates;
* ``vlm4vla stats`` — action statistics of a dataset (cached next to the data);
* ``vlm4vla export CKPT OUT`` — a policy bundle from a Lightning checkpoint;
* ``vlm4vla serve BUNDLE`` — the policy server of ``vlm4vla-eval --policy-server``;
* ``vlm4vla report RESULTS_DIR...`` — the paper's tables and figures from vlm4vla-eval results.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vlm4vla.cli.errors import VLM4VLAError, report

# name → (module with add_arguments(parser) and run(args) -> int, one-line help). Only the module
# of the subcommand run is imported (``params`` imports every backbone: 9 s on 2 cores).
SUBCOMMANDS = {
    "params": ("vlm4vla.cli.params", "parameter counts (the paper's Table 9) and per-GPU memory estimates of recipes"),
    "export": ("vlm4vla.cli.export", "write the policy bundle of an existing Lightning checkpoint"),
    "serve": (
        "vlm4vla.cli.serve",
        "serve a policy bundle over WebSocket to vlm4vla-eval --policy-server (or any vlm4vla-client)",
    ),
    "report": ("vlm4vla.cli.report", "paper-style tables (1-3, 5-8) and figures (3-4) from vlm4vla-eval results directories"),
}
STATS_HELP = "compute and cache the action statistics of a dataset"
LIGHTNING_HELP = {
    "fit": "train from a recipe (LightningCLI)",
    "validate": "validate a checkpoint on a recipe's validation data (LightningCLI)",
    "test": "test a checkpoint (LightningCLI)",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only``, the arguments of that subcommand alone."""
    parser = argparse.ArgumentParser(
        prog="vlm4vla", description="Turn Hugging Face VLMs into VLA policies and benchmark them (VLM4VLA)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in LIGHTNING_HELP.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, (module, help_text) in SUBCOMMANDS.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            importlib.import_module(module).add_arguments(subparser)
    sub.add_parser("stats", help=STATS_HELP, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_HELP:
        from vlm4vla.cli import fit

        try:
            return fit.run(argv)
        except VLM4VLAError as err:
            return report(f"vlm4vla {argv[0]}", err)
    if argv and argv[0] == "stats":
        from vlm4vla.data import stats

        return stats.main(argv[1:])
    parser = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return module.run(args)
    except VLM4VLAError as err:
        return report(f"vlm4vla {args.command}", err)


if __name__ == "__main__":
    sys.exit(main())

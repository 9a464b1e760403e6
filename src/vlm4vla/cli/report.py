"""``vlm4vla report RESULTS_DIR... [--label NAME=DIR …] [--out DIR] [--capabilities FILE.csv]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="*", type=Path, help="vlm4vla-eval --out directories")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=DIR",
                        help="name a results directory (ablations: e.g. 'Qwen3-VL-2B lr=1e-5=results/a'); repeatable")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("report"), help="output directory (default ./report)")
    parser.add_argument("--capabilities", type=Path, default=None,
                        help="CSV backbone,score of general VLM capability (Figure 3)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from vlm4vla.reporting import load_runs, parse_labels, write_report
    from vlm4vla.reporting.figures import read_capabilities
    from vlm4vla.reporting.runs import ReportError

    labels = parse_labels(args.label)
    if not args.results and not labels:
        raise ReportError("give at least one results directory (or --label NAME=DIR)")
    runs = load_runs(args.results, labels)
    capabilities = read_capabilities(args.capabilities) if args.capabilities is not None else None
    result = write_report(runs, args.out, capabilities=capabilities, capabilities_source=str(args.capabilities))
    print(
        f"report: {len(result['tables'])} tables from {len(runs)} runs in {args.out} (report.md, tables.tex, tables.csv, figures)"
    )
    return 0

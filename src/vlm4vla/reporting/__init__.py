"""Paper-style reports over ``vlm4vla-eval`` results directories (``vlm4vla report``): Tables 1–3
and 5–8 beside the paper's numbers, Figures 3–4, as Markdown, LaTeX, CSV, PNG and SVG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlm4vla.files import write_atomic
from vlm4vla.reporting.runs import ReportError, Run, load_run, load_runs, parse_labels
from vlm4vla.reporting.tables import build_tables, to_csv, to_latex, to_markdown


def write_report(runs: Sequence[Run], out: str | Path, *, capabilities: Mapping[str, float] | None = None,
                 capabilities_source: str = "--capabilities") -> dict[str, Any]:  # fmt: skip
    """Write ``report.md``, ``tables.tex``, ``tables.csv`` and the figures into ``out``."""
    from vlm4vla.reporting.figures import figure3, figure4

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = build_tables(runs)
    fits = figure3(runs, capabilities, out, capabilities_source) if capabilities is not None else None
    figure4(runs, out)
    lines = ["# vlm4vla report", "", f"{len(runs)} results directories: "
             + ", ".join(f"`{r.directory}` ({r.name}, {r.suite}, {r.protocol})" for r in runs), ""]  # fmt: skip
    markdown = to_markdown(tables)
    lines += [markdown, "## Figure 4: stability across checkpoints", "", "![box plots](figure4_boxplots.png)", ""]
    lines += [f"![heat map {i + 1}](figure4_heatmap_{i + 1}.png)" for i in range(len(runs))] + [""]
    if fits is not None:
        lines += ["## Figure 3: VLA score vs. general capability", "", "![figure 3](figure3.png)", "",
                  "| benchmark | points | Pearson r | R² |", "|---|---|---|---|"]  # fmt: skip
        for suite, fit in sorted(fits.items()):
            r = "—" if fit["r"] is None else f"{fit['r']:.3f}"
            r2 = "—" if fit["r2"] is None else f"{fit['r2']:.3f}"
            lines.append(f"| {suite} | {fit['n']} | {r} | {r2} |")
        lines.append("")
    write_atomic(out / "report.md", "\n".join(lines))
    write_atomic(out / "tables.tex", to_latex(tables))
    write_atomic(out / "tables.csv", to_csv(tables))
    return {"tables": tables, "fits": fits}


__all__ = ["ReportError", "Run", "load_run", "load_runs", "parse_labels", "write_report"]

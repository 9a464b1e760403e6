"""The paper's figures: Figure 3 (VLA score against a general-capability score, a least-squares
line per benchmark with Pearson r and R²) and Figure 4 (the metric over checkpoints per run as box
plots; a chunk-mode × checkpoint heat map per run). matplotlib (Agg) for drawing, scipy for the
statistics; PNG and SVG."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlm4vla.evaluation.chunking import MODES
from vlm4vla.reporting.runs import ReportError, Run
from vlm4vla.reporting.tables import PERCENT_SUITES, headline

MARKERS = {"calvin": "o", "simpler_bridge": "s", "libero10": "^"}
SUITE_NAMES = {"calvin": "CALVIN (avg. len)", "simpler_bridge": "SimplerEnv-Bridge (%)", "libero10": "LIBERO-10 (%)"}


def read_capabilities(path: str | Path) -> dict[str, float]:
    """``backbone,score`` rows (a header row ``backbone,score`` is allowed) → {backbone: score}."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except OSError as err:
        raise ReportError(f"{path}: cannot read the capabilities CSV ({err.strerror})") from None
    scores: dict[str, float] = {}
    for line_no, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if line_no == 1 and [c.strip().lower() for c in row] == ["backbone", "score"]:
            continue
        if len(row) != 2:
            raise ReportError(f"{path}:{line_no}: expected 'backbone,score', got {','.join(row)!r}")
        try:
            scores[row[0].strip()] = float(row[1])
        except ValueError:
            raise ReportError(f"{path}:{line_no}: score {row[1].strip()!r} is not a number") from None
    return scores


def _save(fig: Any, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    for path in paths:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None, bbox_inches="tight")
    return paths


def capability_points(runs: Sequence[Run], capabilities: Mapping[str, float], source: str) -> dict[str, list[tuple[str, float, float]]]:
    """Per suite: (backbone, capability, VLA score in the paper's units) of every default-variant run."""
    points: dict[str, list[tuple[str, float, float]]] = {}
    for run in runs:
        if not run.is_default_variant:
            continue
        _, value = headline(run)
        if value is None:
            continue
        key = run.label if run.label in capabilities else run.backbone
        if key not in capabilities:
            raise ReportError(f"{source}: no capability score for backbone {run.backbone!r} (run {run.directory})")
        score = 100 * value if run.suite in PERCENT_SUITES else value
        points.setdefault(run.suite, []).append((run.name, float(capabilities[key]), score))
    return points


def figure3(runs: Sequence[Run], capabilities: Mapping[str, float], out: Path, source: str = "--capabilities") -> dict[str, Any]:
    """Scatter + least-squares line per benchmark; returns {suite: {"r", "r2", "slope", "intercept", "n"}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    points = capability_points(runs, capabilities, source)
    fits: dict[str, Any] = {}
    suites = sorted(points)
    # One panel per benchmark (their scores have different units), shared capability axis.
    fig, axes = plt.subplots(1, max(1, len(suites)), figsize=(4.2 * max(1, len(suites)), 3.8), sharex=True, squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=False):
        pts = points[suite]
        xs, ys = [p[1] for p in pts], [p[2] for p in pts]
        label = SUITE_NAMES.get(suite, suite)
        if len(pts) >= 3 and len(set(xs)) > 1:
            fit = stats.linregress(xs, ys)
            fits[suite] = {"r": float(fit.rvalue), "r2": float(fit.rvalue**2), "slope": float(fit.slope),
                           "intercept": float(fit.intercept), "n": len(pts)}  # fmt: skip
            lo, hi = min(xs), max(xs)
            ax.plot([lo, hi], [fit.intercept + fit.slope * lo, fit.intercept + fit.slope * hi], linewidth=1,
                    label=f"least squares: r = {fit.rvalue:.3f}, R² = {fit.rvalue**2:.3f}")  # fmt: skip
        else:
            fits[suite] = {"r": None, "r2": None, "n": len(pts)}  # fewer than 3 points: no line
        ax.scatter(xs, ys, marker=MARKERS.get(suite, "x"), label=label)
        for name, x, y in pts:
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("general capability score (user-supplied)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Figure 3: VLA score vs. general VLM capability")
    _save(fig, out, "figure3")
    plt.close(fig)
    return fits


def figure4(runs: Sequence[Run], out: Path) -> list[Path]:
    """Box plots of each run's metric over its checkpoints (best mode per checkpoint, complete
    cells only) and, per run, the mode × checkpoint heat map (incomplete cells left blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: list[Path] = []
    data, names = [], []
    for run in runs:
        by_ckpt: dict[str, float] = {}
        for cell in run.complete_cells:
            value = float(cell[run.metric])
            by_ckpt[cell["checkpoint"]] = max(value, by_ckpt.get(cell["checkpoint"], -math.inf))
        if by_ckpt:
            data.append(list(by_ckpt.values()))
            names.append(f"{run.name}\n{run.suite}")
    if data:
        fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(data)), 4))
        ax.boxplot(data)
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=7)
        ax.set_ylabel("headline metric (best mode per checkpoint)")
        ax.set_title("Figure 4: stability across checkpoints")
        written += _save(fig, out, "figure4_boxplots")
        plt.close(fig)
    for index, run in enumerate(runs):
        checkpoints = list(dict.fromkeys(c["checkpoint"] for c in run.cells))
        modes = [m for m in MODES if any(c["mode"] == m for c in run.cells)]
        grid = np.full((len(modes), len(checkpoints)), np.nan)
        for cell in run.complete_cells:
            grid[modes.index(cell["mode"]), checkpoints.index(cell["checkpoint"])] = float(cell[run.metric])
        fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(checkpoints) + 2), 2.5))
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(checkpoints)), checkpoints, rotation=45, fontsize=7)
        ax.set_yticks(range(len(modes)), modes)
        ax.set_title(f"{run.name} · {run.suite} ({run.metric})", fontsize=9)
        fig.colorbar(image, ax=ax)
        written += _save(fig, out, f"figure4_heatmap_{index + 1}")
        plt.close(fig)
    return written


__all__ = ["capability_points", "figure3", "figure4", "read_capabilities"]

"""Cell summaries, the best-cell pick, terminal tables, summary files, curves and videos."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlm4vla.evaluation.chunking import MODES
from vlm4vla.files import write_atomic

BEST_RULE = (
    "highest {metric}; ties → the earlier checkpoint (lower training step), then fewer policy "
    "queries (full < half < single)"
)


def _mode_rank(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else len(MODES)


def pick_best(cells: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any] | None:
    """The best (checkpoint, mode) cell by ``cells[i][metric]``.

    Cells need ``metric``, ``checkpoint_index`` (training order) and ``mode``; cells whose
    metric is NaN (no episode yet) are never picked. Ties: earlier checkpoint, then the mode
    with fewer policy queries.
    """
    scored = [c for c in cells if c.get(metric) is not None and not math.isnan(float(c[metric]))]
    if not scored:
        return None
    return dict(min(scored, key=lambda c: (-float(c[metric]), int(c["checkpoint_index"]), _mode_rank(c["mode"]))))


def best_payload(best: Mapping[str, Any] | None, metric: str) -> dict[str, Any]:
    rule = BEST_RULE.format(metric=metric)
    if best is None:
        return {"best": None, "metric": metric, "rule": rule}
    keys = ("checkpoint", "checkpoint_path", "step", "mode", "chunk_size", "steps_per_query", "episodes", "complete")
    return {"best": {k: best.get(k) for k in keys} | {metric: best[metric]}, "metric": metric, "rule": rule}


def _cell_text(cell: Mapping[str, Any] | None, metric: str, best: Mapping[str, Any] | None, highlight: str) -> str:
    """A table cell: the metric, the episode count while incomplete, ``highlight`` on the best cell."""
    if cell is None:
        return ""
    text = _fmt(cell[metric])
    if not cell["complete"]:
        text += f" ({cell['episodes']}/{cell['expected_episodes']})"
    if best and best["checkpoint"] == cell["checkpoint"] and best["mode"] == cell["mode"]:
        text = highlight.format(text)
    return text


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.3f}"
    return "—" if value is None else str(value)


def _scalar_metrics(cell: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cell.get("metrics", {}).items() if isinstance(v, (int, float, bool)) and k != "episodes"}


def summary_csv(cells: Sequence[Mapping[str, Any]]) -> str:
    """One row per cell: identity, episode counts, every scalar metric, per-task headline."""
    metric_names: list[str] = []
    task_names: list[str] = []
    for cell in cells:
        metric_names += [k for k in _scalar_metrics(cell) if k not in metric_names]
        task_names += [t for t in cell.get("metrics", {}).get("per_task", {}) if t not in task_names]
    head = ["checkpoint", "step", "mode", "chunk_size", "steps_per_query", "episodes", "expected_episodes", "complete"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head + metric_names + [f"task:{t}" for t in task_names])
    for cell in cells:
        per_task = cell.get("metrics", {}).get("per_task", {})
        metric = cell["headline_metric"]
        row = [cell.get(k) for k in head]
        row += [cell.get("metrics", {}).get(m) for m in metric_names]
        row += [per_task.get(t, {}).get(metric) for t in task_names]
        writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in row])
    return buf.getvalue()


def summary_markdown(
    suite: str, cells: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None, metric: str
) -> str:
    checkpoints = list(dict.fromkeys(c["checkpoint"] for c in cells))
    modes = [m for m in MODES if any(c["mode"] == m for c in cells)]
    by_key = {(c["checkpoint"], c["mode"]): c for c in cells}
    lines = [f"# {suite}: {metric}", "", "| checkpoint | step | " + " | ".join(modes) + " |"]
    lines.append("|---|---:|" + "---:|" * len(modes))
    for ckpt in checkpoints:
        row = [_cell_text(by_key.get((ckpt, mode)), metric, best, "**{}**") for mode in modes]
        step = next(c["step"] for c in cells if c["checkpoint"] == ckpt)
        lines.append(f"| {ckpt} | {_fmt(step)} | " + " | ".join(row) + " |")
    lines.append("")
    if best:
        lines += [
            f"Best: **{best['checkpoint']} / {best['mode']}** ({metric} {_fmt(best[metric])}); rule: "
            + BEST_RULE.format(metric=metric)
            + ".",
            "",
        ]
    lines += ["## Per task", ""]
    for cell in cells:
        per_task = cell.get("metrics", {}).get("per_task", {})
        if not per_task:
            continue
        lines += [
            f"### {cell['checkpoint']} / {cell['mode']}",
            "",
            f"| task | episodes | {metric} |",
            "|---|---:|---:|",
        ]
        lines += [f"| {t} | {v.get('episodes', '')} | {_fmt(v.get(metric))} |" for t, v in per_task.items()]
        lines.append("")
    return "\n".join(lines)


def plot_curves(path: str | os.PathLike, cells: Sequence[Mapping[str, Any]], metric: str, suite: str) -> bool:
    """``curves.png``: ``metric`` vs training step, one line per mode. False if no cell has a step."""
    points = [c for c in cells if c.get("step") is not None and not math.isnan(float(c[metric]))]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for mode in MODES:
        series = sorted((c["step"], float(c[metric])) for c in points if c["mode"] == mode)
        if series:
            ax.plot([s for s, _ in series], [v for _, v in series], marker="o", label=mode)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_title(suite)
    ax.grid(alpha=0.3)
    ax.legend(title="chunk mode")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    write_atomic(path, buf.getvalue())
    return True


def json_safe(value: Any) -> Any:
    """``value`` with NaN/±inf (a cell or task without episodes) as None and numpy scalars as
    Python ones, so the reports are strict JSON that any parser reads."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dumps(payload: Any) -> str:
    # allow_nan=False: a non-finite float that slipped past json_safe is a bug, not bare NaN.
    return json.dumps(json_safe(payload), indent=2, allow_nan=False, default=str) + "\n"


def write_reports(
    out: str | os.PathLike,
    suite: str,
    metric: str,
    cells: Sequence[Mapping[str, Any]],
    *,
    candidates: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """Write ``summary.{json,csv,md}``, ``best.json`` and ``curves.png`` in ``out``; return the best
    cell, picked among ``candidates`` (default: all cells)."""
    out = Path(out)
    best = pick_best(cells if candidates is None else candidates, metric)
    payload = {"suite": suite, "headline_metric": metric, "cells": list(cells), **best_payload(best, metric)}
    write_atomic(out / "summary.json", _dumps(payload))
    write_atomic(out / "summary.csv", summary_csv(cells))
    write_atomic(out / "summary.md", summary_markdown(suite, cells, best, metric))
    write_atomic(out / "best.json", _dumps(best_payload(best, metric)))
    plot_curves(out / "curves.png", cells, metric, suite)
    return best


def render_table(cells: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None, metric: str, suite: str) -> Any:
    """A rich table: one row per checkpoint, one column per mode; the best cell in bold."""
    from rich.table import Table

    modes = [m for m in MODES if any(c["mode"] == m for c in cells)]
    table = Table(title=f"{suite}: {metric}")
    table.add_column("checkpoint")
    table.add_column("step", justify="right")
    for mode in modes:
        table.add_column(mode, justify="right")
    by_key = {(c["checkpoint"], c["mode"]): c for c in cells}
    for ckpt in dict.fromkeys(c["checkpoint"] for c in cells):
        row = [_cell_text(by_key.get((ckpt, mode)), metric, best, "[bold green]{} ★[/]") for mode in modes]
        step = next(c["step"] for c in cells if c["checkpoint"] == ckpt)
        table.add_row(ckpt, _fmt(step), *row)
    return table


def render_tasks(cell: Mapping[str, Any], metric: str) -> Any:
    """Per-task breakdown of one cell as a rich table."""
    from rich.table import Table

    table = Table(title=f"{cell['checkpoint']} / {cell['mode']}: per task")
    table.add_column("task")
    table.add_column("episodes", justify="right")
    table.add_column(metric, justify="right")
    for task, values in cell.get("metrics", {}).get("per_task", {}).items():
        table.add_row(task, _fmt(values.get("episodes")), _fmt(values.get(metric)))
    return table


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, *, fps: int = 10) -> None:
    """Encode (H, W, 3) uint8 frames as an H.264 MP4 (PyAV), atomically."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = np.asarray(frames[0])
    height, width = first.shape[0] + first.shape[0] % 2, first.shape[1] + first.shape[1] % 2
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frame in frames:
                arr = np.asarray(frame, dtype=np.uint8)
                if arr.shape[:2] != (height, width):
                    arr = np.pad(arr, ((0, height - arr.shape[0]), (0, width - arr.shape[1]), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

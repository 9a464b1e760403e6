"""Results directories of ``vlm4vla-eval`` as `Run` objects: what a paper-style report groups.

A run is one ``--out`` directory: its ``summary.json`` (every checkpoint × mode cell), the cells'
``meta.json`` (suite, protocol, settings) and the bundle config of its checkpoints
(``vla_config.json``: backbone, training switches). Its identity in a report is the backbone, the
suite, the protocol and its *variant* (the training switches the paper's ablations vary), unless
the user labels it (``--label NAME=DIR``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm4vla.errors import ConfigError

SUMMARY = "summary.json"
META = "meta.json"
CONFIG = "vla_config.json"


class ReportError(ConfigError):
    """A results directory or input file the report cannot use; one line naming it."""


@dataclass
class Run:
    """One results directory."""

    directory: Path
    suite: str
    protocol: str
    metric: str
    cells: list[dict[str, Any]]
    config: dict[str, Any] = field(repr=False)
    label: str | None = None

    @property
    def backbone(self) -> str:
        return str(self.config.get("backbone", "?"))

    @property
    def variant(self) -> dict[str, Any]:
        """The training switches the paper's ablations vary (Tables 3, 5–8), from the bundle."""
        lora = self.config.get("lora") or None
        return {
            "freeze_vision_encoder": bool(self.config.get("freeze_vision_encoder", False)),
            "freeze_word_embeddings": bool(self.config.get("freeze_word_embeddings", False)),
            "from_scratch": self.config.get("weights") == "random",
            "image_size": int(self.config.get("image_size", 224)),
            "prompt_scheme": self.config.get("prompt_scheme"),
            "lora_rank": int(lora["rank"]) if lora else 0,
        }

    @property
    def is_default_variant(self) -> bool:
        v = self.variant
        return not (v["freeze_vision_encoder"] or v["freeze_word_embeddings"] or v["from_scratch"]) and (
            v["image_size"] == 224 and v["prompt_scheme"] in (None, "long") and v["lora_rank"] == 0
        )

    @property
    def name(self) -> str:
        return self.label or self.backbone

    @property
    def complete(self) -> bool:
        return all(c.get("complete") for c in self.cells)

    @property
    def complete_cells(self) -> list[dict[str, Any]]:
        return [c for c in self.cells if c.get("complete") and _finite(c.get(self.metric))]

    def best_cell(self) -> dict[str, Any] | None:
        """The best complete cell (highest metric; ties: earlier checkpoint, fewer queries).
        Incomplete cells are never picked (an interrupted sweep would bias the pick)."""
        from vlm4vla.evaluation.report import pick_best

        return pick_best(self.complete_cells, self.metric)

    def source(self, cell: Mapping[str, Any]) -> str:
        """Where a number comes from: directory, checkpoint and mode."""
        return f"{self.directory} · {cell['checkpoint']} · {cell['mode']}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path.parent}: not a vlm4vla-eval results directory (no {path.name})") from None
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: unreadable {what} ({err})") from None


def _bundle_config(directory: Path, cell: Mapping[str, Any]) -> dict[str, Any]:
    """The ``vla_config.json`` of a cell's checkpoint: its recorded path as given (absolute or
    relative to where vlm4vla-eval ran, usually the working directory), else relative to the
    results directory and its parents."""
    recorded = Path(str(cell.get("checkpoint_path", "")))
    candidates = [recorded] if recorded.is_absolute() else [recorded, *(p / recorded for p in [directory, *directory.parents])]
    for candidate in candidates:
        if (candidate / CONFIG).is_file():
            return _read_json(candidate / CONFIG, "bundle config")
    raise ReportError(
        f"{directory}: the bundle of checkpoint {cell.get('checkpoint')} ({recorded}/{CONFIG}) is not found; "
        "run vlm4vla report from the directory vlm4vla-eval ran in"
    )


def load_run(directory: str | os.PathLike, label: str | None = None) -> Run:
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(f"{directory}: no such results directory")
    summary = _read_json(directory / SUMMARY, "summary")
    if not isinstance(summary, dict) or not isinstance(summary.get("cells"), list) or "suite" not in summary:
        raise ReportError(f"{directory / SUMMARY}: not a vlm4vla-eval summary (expected 'suite' and 'cells')")
    cells = summary["cells"]
    if not cells:
        raise ReportError(f"{directory / SUMMARY}: no cells")
    metric = str(summary.get("headline_metric") or cells[0].get("headline_metric"))
    meta_path = directory / str(cells[0]["checkpoint"]) / str(cells[0]["mode"]) / META
    meta = _read_json(meta_path, "cell meta") if meta_path.is_file() else {}
    return Run(
        directory=directory,
        suite=str(summary["suite"]),
        protocol=str(meta.get("protocol", "unrecorded")),
        metric=metric,
        cells=cells,
        config=_bundle_config(directory, cells[0]),
        label=label,
    )


def parse_labels(items: Sequence[str]) -> dict[Path, str]:
    """``["Qwen3-VL-2B lr=1e-5=results/a"]`` → ``{Path("results/a").resolve(): "Qwen3-VL-2B lr=1e-5"}``
    (the last ``=`` separates the name from the directory)."""
    labels: dict[Path, str] = {}
    for item in items:
        name, sep, directory = item.rpartition("=")
        if not sep or not name.strip() or not directory.strip():
            raise ReportError(f"--label {item!r}: expected NAME=DIR")
        labels[Path(directory).resolve()] = name.strip()
    return labels


def load_runs(directories: Sequence[str | os.PathLike], labels: Mapping[Path, str] | None = None) -> list[Run]:
    """Every results directory (plus the labelled ones); refuse two unlabelled runs with the same
    identity (backbone, suite, protocol, variant) — the report could not tell them apart."""
    labels = dict(labels or {})
    paths = [Path(d) for d in directories]
    paths += [p for p in labels if p not in {q.resolve() for q in paths}]
    runs = [load_run(p, labels.get(p.resolve())) for p in paths]
    seen: dict[tuple, Run] = {}
    for run in runs:
        key = (run.name, run.suite, run.protocol, json.dumps(run.variant, sort_keys=True))
        if key in seen:
            raise ReportError(
                f"{seen[key].directory} and {run.directory} are both {run.name} on {run.suite} ({run.protocol}, same "
                "training switches); give them names with --label NAME=DIR"
            )
        seen[key] = run
    return runs


__all__ = ["ReportError", "Run", "load_run", "load_runs", "parse_labels"]

"""The paper's tables from `Run` objects: Table 1 (CALVIN), Table 2 (SimplerEnv-Bridge, LIBERO-10)
and the ablation tables (3: frozen parts; 5: learning rate; 6: prompt scheme; 7: resolution;
8: from scratch), each value keyed to the results directory, checkpoint and mode it came from,
beside the paper's number where the reference data has one. Rendered as GitHub Markdown,
LaTeX (booktabs) and CSV.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from vlm4vla.reporting.runs import Run

SIMPLER_TASKS = ("widowx_carrot_on_plate", "widowx_put_eggplant_in_basket", "widowx_spoon_on_towel", "widowx_stack_cube")
SIMPLER_SHORT = {"widowx_carrot_on_plate": "carrot", "widowx_put_eggplant_in_basket": "eggplant",
                 "widowx_spoon_on_towel": "spoon", "widowx_stack_cube": "cube"}  # fmt: skip
PERCENT_SUITES = ("simpler_bridge", "libero10")  # success rates, printed in % as the paper does
INCOMPLETE = "†"


@functools.lru_cache(maxsize=1)
def paper_reference() -> dict[str, Any]:
    """The paper's numbers shipped with the package (``reporting/paper_results.json``), read once
    (callers only read it)."""
    return json.loads(resources.files("vlm4vla.reporting").joinpath("paper_results.json").read_text())


def paper_entry(backbone: str) -> dict[str, Any] | None:
    for entry in paper_reference()["backbones"]:
        if entry["preset"] == backbone:
            return entry
    return None


@dataclass
class Cell:
    """A table cell: its text and, for numbers from a run, the value and its source."""

    text: str
    value: float | None = None
    source: str | None = None
    incomplete: bool = False


@dataclass
class Table:
    key: str  # "table1" …
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def sources(self) -> list[str]:
        """Distinct sources in reading order (their 1-based index is the footnote key)."""
        out: list[str] = []
        for row in self.rows:
            for cell in row:
                if cell.source and cell.source not in out:
                    out.append(cell.source)
        return out


# -------------------------------------------------------------------- values
def _fmt(value: float | None, suite: str, *, percent: bool | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    percent = suite in PERCENT_SUITES if percent is None else percent
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def _value_cell(run: Run, cell: dict[str, Any] | None, value: float | None, *, percent: bool | None = None) -> Cell:
    if cell is None:
        return Cell("—" + (f" {INCOMPLETE}" if not run.complete else ""), incomplete=not run.complete)
    text = _fmt(value, run.suite, percent=percent)
    if not run.complete:
        text += f" {INCOMPLETE}"
    return Cell(text, value=value, source=run.source(cell), incomplete=not run.complete)


def headline(run: Run) -> tuple[dict[str, Any] | None, float | None]:
    best = run.best_cell()
    return best, (float(best[run.metric]) if best is not None else None)


def _paper_value(run: Run) -> float | None:
    entry = paper_entry(run.backbone)
    if entry is None or run.suite not in entry:
        return None
    value = float(entry[run.suite])
    return value / 100 if run.suite in PERCENT_SUITES else value


def _paper_cells(run: Run, value: float | None) -> list[Cell]:
    paper = _paper_value(run)
    if paper is None:
        return [Cell("—"), Cell("—")]
    delta = None if value is None else value - paper
    sign = "" if delta is None or delta < 0 else "+"
    return [Cell(_fmt(paper, run.suite)), Cell(sign + _fmt(delta, run.suite) if delta is not None else "—")]


def _size(run: Run) -> str:
    entry = paper_entry(run.backbone)
    return entry["size"] if entry else "—"


def _incomplete_note(runs: Sequence[Run]) -> list[str]:
    bad = [r for r in runs if not r.complete]
    if not bad:
        return []
    parts = [f"{r.directory} ({len(r.complete_cells)}/{len(r.cells)} cells complete)" for r in bad]
    return [f"{INCOMPLETE} incomplete sweep, best of its complete cells only (never averaged with missing episodes): "
            + "; ".join(parts)]  # fmt: skip


# -------------------------------------------------------------------- paper tables
def table1(runs: Sequence[Run]) -> Table:
    rows_runs = [r for r in runs if r.suite == "calvin" and r.is_default_variant]
    table = Table(
        "table1", "Table 1: CALVIN ABC→D (success rate % at chain length 1–5, average length)",
        ["Backbone", "Size", "1", "2", "3", "4", "5", "Avg. len", "Paper", "Δ"],
    )  # fmt: skip
    for run in rows_runs:
        best, value = headline(run)
        metrics = (best or {}).get("metrics", {})
        chain = [_value_cell(run, best, metrics.get(f"chain_{i}"), percent=True) for i in range(1, 6)]
        table.rows.append([Cell(run.name), Cell(_size(run)), *chain, _value_cell(run, best, value), *_paper_cells(run, value)])
    table.notes = [f"Paper values: {paper_reference()['sources']['calvin']}; per chain length not in the shipped reference."]
    table.notes += _incomplete_note(rows_runs)
    return table


def table2(runs: Sequence[Run]) -> Table:
    simpler = [r for r in runs if r.suite == "simpler_bridge" and r.is_default_variant]
    libero = [r for r in runs if r.suite == "libero10" and r.is_default_variant]
    columns = ["Backbone", "Size", *(SIMPLER_SHORT[t] for t in SIMPLER_TASKS), "Simpler avg", "Simpler paper",
               "Simpler Δ", "LIBERO-10", "LIBERO paper", "LIBERO Δ"]  # fmt: skip
    table = Table("table2", "Table 2: SimplerEnv-Bridge per task and average, LIBERO-10 (success rate %)", columns)
    names = list(dict.fromkeys([r.name for r in simpler] + [r.name for r in libero]))
    for name in names:
        s = next((r for r in simpler if r.name == name), None)
        lib = next((r for r in libero if r.name == name), None)
        any_run = s or lib
        row = [Cell(name), Cell(_size(any_run))]
        if s is not None:
            best, value = headline(s)
            per_task = (best or {}).get("metrics", {}).get("per_task", {})
            row += [_value_cell(s, best, (per_task.get(t) or {}).get(s.metric)) for t in SIMPLER_TASKS]
            row += [_value_cell(s, best, value), *_paper_cells(s, value)]
        else:
            row += [Cell("—")] * (len(SIMPLER_TASKS) + 3)
        if lib is not None:
            best, value = headline(lib)
            row += [_value_cell(lib, best, value), *_paper_cells(lib, value)]
        else:
            row += [Cell("—")] * 3
        table.rows.append(row)
    sources = paper_reference()["sources"]
    table.notes = [f"Paper values: {sources['simpler_bridge']} (average), {sources['libero10']}; per task not in the shipped reference."]
    table.notes += _incomplete_note(simpler + libero)
    # Only the benchmarks that have runs get columns.
    keep = [i for i, c in enumerate(columns) if (simpler or i < 2 or i >= 9) and (libero or i < 9)]
    table.columns = [columns[i] for i in keep]
    table.rows = [[row[i] for i in keep] for row in table.rows]
    return table


def _ablation(
    runs: Sequence[Run], key: str, title: str, setting: Callable[[Run], str | None], baseline_name: str
) -> Table:
    """Rows per (backbone, suite, protocol): the baseline (default variant) then each run whose
    ``setting`` is not None, with its change against the baseline in parentheses."""
    table = Table(key, title, ["Backbone", "Suite", "Setting", "Score", "(Δ vs. baseline)"])
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.backbone, run.suite, run.protocol), []).append(run)
    used: list[Run] = []
    for (_backbone, suite, _protocol), members in groups.items():
        variants = [r for r in members if setting(r) is not None]
        if not variants:
            continue
        base = next((r for r in members if r.is_default_variant and setting(r) is None), None)
        base_value = headline(base)[1] if base is not None else None
        if base is not None:
            best, value = headline(base)
            table.rows.append([Cell(base.name), Cell(suite), Cell(baseline_name), _value_cell(base, best, value), Cell("")])
            used.append(base)
        for run in variants:
            best, value = headline(run)
            delta = None if value is None or base_value is None else value - base_value
            sign = "" if delta is None or delta < 0 else "+"
            delta_text = f"({sign}{_fmt(delta, suite)})" if delta is not None else "(no baseline)"
            table.rows.append([Cell(run.name), Cell(suite), Cell(str(setting(run))), _value_cell(run, best, value), Cell(delta_text)])
            used.append(run)
    table.notes = _incomplete_note(used)
    return table


_LR = re.compile(r"lr\s*=\s*([0-9.eE+-]+)")


def ablation_tables(runs: Sequence[Run]) -> list[Table]:
    """Tables 3, 5–8 for whichever ablation runs are present."""

    def frozen(run: Run) -> str | None:
        v = run.variant
        parts = [name for name, on in (("freeze vision", v["freeze_vision_encoder"]), ("freeze word emb.", v["freeze_word_embeddings"])) if on]  # fmt: skip
        return ", ".join(parts) or None

    def lr(run: Run) -> str | None:
        match = _LR.search(run.label or "")
        return f"lr {match.group(1)}" if match else None

    def prompt(run: Run) -> str | None:
        scheme = run.variant["prompt_scheme"]
        return f"prompt {scheme}" if scheme not in (None, "long") else None

    def resolution(run: Run) -> str | None:
        size = run.variant["image_size"]
        return f"{size}²" if size != 224 else None

    def scratch(run: Run) -> str | None:
        return "from scratch" if run.variant["from_scratch"] else None

    specs = [
        ("table3", "Table 3: freezing the vision encoder / word embeddings", frozen, "full fine-tune"),
        ("table5", "Table 5: learning rate (runs labelled lr=…)", lr, "recipe LR"),
        ("table6", "Table 6: Qwen prompt scheme", prompt, "prompt long"),
        ("table7", "Table 7: image resolution", resolution, "224²"),
        ("table8", "Table 8: training from scratch", scratch, "pretrained VLM"),
    ]
    tables = [_ablation(runs, *spec) for spec in specs]
    notes = paper_reference()["ablations"]
    for table in tables:
        if table.key == "table3":
            table.notes.insert(0, f"Paper: freezing the vision encoder {notes['freeze_vision_encoder']}; word embeddings {notes['freeze_word_embeddings']}.")
        if table.key == "table8":
            table.notes.insert(0, f"Paper: from scratch {notes['from_scratch']}.")
    return [t for t in tables if t.rows]


def build_tables(runs: Sequence[Run]) -> list[Table]:
    tables = [table1(runs), table2(runs), *ablation_tables(runs)]
    return [t for t in tables if t.rows]


# -------------------------------------------------------------------- rendering
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(tables: Sequence[Table]) -> str:
    out: list[str] = []
    for table in tables:
        sources = table.sources()
        out += [f"## {table.title}", "", "| " + " | ".join(map(_md_escape, table.columns)) + " |",
                "|" + "---|" * len(table.columns)]  # fmt: skip
        for row in table.rows:
            texts = [cell.text + (f" [{sources.index(cell.source) + 1}]" if cell.source else "") for cell in row]
            out.append("| " + " | ".join(map(_md_escape, texts)) + " |")
        out.append("")
        out += [f"[{i}] {source}  " for i, source in enumerate(sources, start=1)]
        out += [f"{note}  " for note in table.notes]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("²", r"$^2$"), ("Δ", r"$\Delta$"), ("→", r"$\rightarrow$"), ("—", "--"), ("†", r"$^\dagger$"),
                 ("–", "--"), ("·", r"$\cdot$")):  # fmt: skip
        text = text.replace(a, b)
    return text


def to_latex(tables: Sequence[Table]) -> str:
    out = ["% vlm4vla report: one table per paper table (needs \\usepackage{booktabs})"]
    for table in tables:
        sources = table.sources()
        out += ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex_escape(table.title)}}}",
                f"\\label{{tab:vlm4vla-{table.key}}}", "\\begin{tabular}{" + "l" * 2 + "r" * (len(table.columns) - 2) + "}",
                "\\toprule", " & ".join(_tex_escape(c) for c in table.columns) + " \\\\", "\\midrule"]  # fmt: skip
        for row in table.rows:
            texts = [_tex_escape(c.text) + (f"$^{{{sources.index(c.source) + 1}}}$" if c.source else "") for c in row]
            out.append(" & ".join(texts) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        if sources or table.notes:
            notes = [f"{i}: {_tex_escape(s)}" for i, s in enumerate(sources, start=1)] + [_tex_escape(n) for n in table.notes]
            out.append("\\par\\footnotesize " + "; ".join(notes))
        out += ["\\end{table}", ""]
    return "\n".join(out)


def to_csv(tables: Sequence[Table]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["table", "row", "column", "text", "value", "source", "incomplete"])
    for table in tables:
        for row in table.rows:
            for column, cell in zip(table.columns, row, strict=True):
                writer.writerow([table.key, row[0].text, column, cell.text,
                                 "" if cell.value is None else repr(float(cell.value)), cell.source or "", cell.incomplete])  # fmt: skip
    return buffer.getvalue()


__all__ = ["Cell", "Table", "ablation_tables", "build_tables", "paper_reference", "table1", "table2", "to_csv",
           "to_latex", "to_markdown"]  # fmt: skip

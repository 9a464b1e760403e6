"""`vlm4vla report` over results directories: real LIBERO smoke runs and synthetic CALVIN /
SimplerEnv results written by the harness's own report writer (`write_reports`)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from vlm4vla.cli.main import main
from vlm4vla.evaluation.report import write_reports
from vlm4vla.reporting import load_runs, write_report
from vlm4vla.reporting.runs import ReportError

TASKS = ("widowx_carrot_on_plate", "widowx_put_eggplant_in_basket", "widowx_spoon_on_towel", "widowx_stack_cube")


def _bundle(root: Path, step: int, **config: Any) -> Path:
    """A bundle directory as far as the report reads it: its vla_config.json."""
    bundle = root / "checkpoints" / f"step={step:06d}"
    bundle.mkdir(parents=True)
    (bundle / "vla_config.json").write_text(json.dumps({"format_version": 2, "image_size": 224, **config}))
    return bundle


def _results(
    tmp: Path, name: str, suite: str, metric: str, values: dict[tuple[int, str], float], *,
    complete: set[tuple[int, str]] | None = None, per_task: dict[str, float] | None = None,
    chain: list[float] | None = None, protocol: str = "standard", **config: Any,
) -> Path:  # fmt: skip
    """A results directory with one cell per (step, mode): summary.json etc. through the harness's
    writer, a meta.json per cell, and the bundles the cells point to."""
    run, out = tmp / "runs" / name, tmp / "results" / name
    steps = sorted({s for s, _ in values})
    paths = {s: _bundle(run, s, **config) for s in steps}
    cells = []
    for (step, mode), value in values.items():
        done = complete is None or (step, mode) in complete
        metrics: dict[str, Any] = {"episodes": 4 if done else 2, metric: value}
        if per_task is not None:
            metrics["per_task"] = {t: {"episodes": 1, metric: v} for t, v in per_task.items()}
        if chain is not None:
            metrics.update({f"chain_{i + 1}": c for i, c in enumerate(chain)})
        cells.append({
            "checkpoint": f"step={step:06d}", "checkpoint_path": str(paths[step]), "checkpoint_index": steps.index(step),
            "step": step, "mode": mode, "chunk_size": 4, "steps_per_query": 4, "episodes": metrics["episodes"],
            "expected_episodes": 4, "complete": done, "headline_metric": metric, metric: value, "metrics": metrics,
        })  # fmt: skip
        cell_dir = out / f"step={step:06d}" / mode
        cell_dir.mkdir(parents=True)
        (cell_dir / "meta.json").write_text(json.dumps({"suite": suite, "protocol": protocol}))
    write_reports(out, suite, metric, cells)
    return out


@pytest.fixture
def synthetic(tmp_path: Path) -> dict[str, Path]:
    r: dict[str, Path] = {}
    full = {(5000, "full"): 3.9, (5000, "half"): 4.2, (10000, "full"): 4.0, (10000, "half"): 4.1}
    r["calvin_qwen"] = _results(tmp_path, "calvin_qwen", "calvin", "avg_len", full,
                                chain=[0.95, 0.9, 0.85, 0.8, 0.7], backbone="qwen3-vl-2b")  # fmt: skip
    r["calvin_pali"] = _results(tmp_path, "calvin_pali", "calvin", "avg_len", {(5000, "full"): 3.2, (10000, "full"): 3.5},
                                backbone="paligemma-3b")  # fmt: skip
    r["calvin_kosmos"] = _results(tmp_path, "calvin_kosmos", "calvin", "avg_len", {(5000, "full"): 3.0},
                                  backbone="kosmos-2")  # fmt: skip
    r["calvin_qwen_frozen"] = _results(tmp_path, "calvin_qwen_frozen", "calvin", "avg_len", {(5000, "full"): 2.5},
                                       backbone="qwen3-vl-2b", freeze_vision_encoder=True)  # fmt: skip
    # An interrupted sweep: its best-looking cell is incomplete and must not be picked.
    r["calvin_qwen_scratch"] = _results(
        tmp_path, "calvin_qwen_scratch", "calvin", "avg_len", {(5000, "full"): 1.4, (10000, "full"): 2.9},
        complete={(5000, "full")}, backbone="qwen3-vl-2b", weights="random",
    )
    r["simpler_qwen"] = _results(tmp_path, "simpler_qwen", "simpler_bridge", "success_rate", {(5000, "full"): 0.5},
                                 per_task=dict(zip(TASKS, [0.5, 0.25, 0.75, 0.5], strict=True)), backbone="qwen3-vl-2b")  # fmt: skip
    return r


def _table_values(report: Path) -> dict[tuple[str, str, str], tuple[str, float | None, str]]:
    rows = list(csv.DictReader(io.StringIO((report / "tables.csv").read_text())))
    return {(r["table"], r["row"], r["column"]): (r["text"], float(r["value"]) if r["value"] else None, r["source"])
            for r in rows}  # fmt: skip


def test_every_table_number_is_its_summary_value(synthetic: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["report", *map(str, synthetic.values()), "--out", str(out)]) == 0
    values = _table_values(out)
    # Table 1: the best complete cell of each CALVIN run, beside the paper's value (Table 1)
    text, value, source = values[("table1", "qwen3-vl-2b", "Avg. len")]
    assert (value, text) == (4.2, "4.200") and source.endswith("calvin_qwen · step=005000 · half")
    assert values[("table1", "qwen3-vl-2b", "Paper")][0] == "4.142"  # Qwen3-VL-2B, paper Table 1
    assert values[("table1", "qwen3-vl-2b", "Δ")][0] == "+0.058"  # 4.2 − 4.142, by hand
    assert values[("table1", "qwen3-vl-2b", "1")][0] == "95.0" and values[("table1", "qwen3-vl-2b", "5")][0] == "70.0"
    assert values[("table1", "paligemma-3b", "Avg. len")][1] == 3.5  # the later checkpoint is better
    assert values[("table1", "paligemma-3b", "Size")][0] == "2.9B"
    assert values[("table1", "kosmos-2", "Δ")][0] == "-0.096"  # 3.0 − 3.096
    # every number in every table equals the one in its summary.json
    summaries = {str(d): json.loads((d / "summary.json").read_text()) for d in synthetic.values()}
    for (table, row, column), (_text, number, src) in values.items():
        if number is None or not src:
            continue
        directory, checkpoint, mode = src.split(" · ")
        cell = next(c for c in summaries[directory]["cells"] if (c["checkpoint"], c["mode"]) == (checkpoint, mode))
        candidates = [cell[cell["headline_metric"]], *cell["metrics"].values()]
        candidates += [t[cell["headline_metric"]] for t in cell["metrics"].get("per_task", {}).values()]
        assert any(isinstance(c, float) and c == number for c in candidates), (table, row, column, number)
    # Table 2: SimplerEnv per task and average, in %, with the paper's average (49.0 for Qwen3-VL-2B)
    assert [values[("table2", "qwen3-vl-2b", t)][0] for t in ("carrot", "eggplant", "spoon", "cube")] == [
        "50.0", "25.0", "75.0", "50.0"]  # fmt: skip
    assert values[("table2", "qwen3-vl-2b", "Simpler avg")][0] == "50.0"
    assert values[("table2", "qwen3-vl-2b", "Simpler paper")][0] == "49.0"
    assert values[("table2", "qwen3-vl-2b", "Simpler Δ")][0] == "+1.0"
    # Table 3: frozen vision encoder, change against the unfrozen run in parentheses (2.5 − 4.2)
    assert values[("table3", "qwen3-vl-2b", "(Δ vs. baseline)")][0] == "(-1.700)"
    # Table 8 (incomplete sweep): only the complete cell counts, marked, never the incomplete 2.9
    text, value, _ = [v for k, v in values.items() if k[0] == "table8" and k[2] == "Score"][-1]
    assert value == 1.4 and text.endswith("†")
    report = (out / "report.md").read_text()
    assert "incomplete sweep" in report and "(1/2 cells complete)" in report
    tex = (out / "tables.tex").read_text()
    assert tex.count("\\begin{table}") == 4 and "\\toprule" in tex and "\\bottomrule" in tex  # tables 1, 2, 3, 8
    for name in ("figure4_boxplots", "figure4_heatmap_1"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.svg").read_text().startswith("<?xml")


def test_figure3_fits_are_scipys_linregress(synthetic: dict[str, Path], tmp_path: Path) -> None:
    capabilities = tmp_path / "capabilities.csv"
    capabilities.write_text("backbone,score\nqwen3-vl-2b,71.5\npaligemma-3b,55.0\nkosmos-2,40.25\n")
    runs = load_runs([synthetic[k] for k in ("calvin_qwen", "calvin_pali", "calvin_kosmos", "simpler_qwen")])
    from vlm4vla.reporting.figures import read_capabilities

    result = write_report(runs, tmp_path / "out", capabilities=read_capabilities(capabilities))
    expected = stats.linregress([71.5, 55.0, 40.25], [4.2, 3.5, 3.0])  # the best cells, by hand
    fit = result["fits"]["calvin"]
    assert fit["n"] == 3 and fit["r"] == pytest.approx(expected.rvalue, abs=1e-12)
    assert fit["r2"] == pytest.approx(expected.rvalue**2, abs=1e-12)
    assert fit["slope"] == pytest.approx(expected.slope, abs=1e-12)
    assert result["fits"]["simpler_bridge"] == {"r": None, "r2": None, "n": 1}  # one point: no line
    assert (tmp_path / "out" / "figure3.png").is_file() and (tmp_path / "out" / "figure3.svg").is_file()
    assert f"| calvin | 3 | {expected.rvalue:.3f} | {expected.rvalue**2:.3f} |" in (tmp_path / "out" / "report.md").read_text()


def test_bad_inputs_are_one_line_each(synthetic: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(*argv: str) -> str:
        assert main(["report", *argv, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert "not a vlm4vla-eval results directory (no summary.json)" in error(str(tmp_path))
    copy = tmp_path / "results" / "copy"
    import shutil

    shutil.copytree(synthetic["calvin_pali"], copy)
    err = error(str(synthetic["calvin_pali"]), str(copy))
    assert "are both paligemma-3b on calvin" in err and "--label" in err
    assert main(["report", str(synthetic["calvin_pali"]), "--label", f"PaliGemma again={copy}",
                 "--out", str(tmp_path / "ok")]) == 0  # fmt: skip
    capsys.readouterr()
    capabilities = tmp_path / "caps.csv"
    capabilities.write_text("qwen3-vl-2b,71.5\n")
    err = error(str(synthetic["calvin_pali"]), "--capabilities", str(capabilities))
    assert f"{capabilities}: no capability score for backbone 'paligemma-3b'" in err
    capabilities.write_text("qwen3-vl-2b,seventy\n")
    assert "score 'seventy' is not a number" in error(str(synthetic["calvin_pali"]), "--capabilities", str(capabilities))
    with pytest.raises(ReportError, match="expected NAME=DIR"):
        from vlm4vla.reporting.runs import parse_labels

        parse_labels(["nolabel"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="no LIBERO package installed")
def test_report_of_a_real_libero_smoke_sweep(tmp_path: Path) -> None:
    from vlm4vla.cli.evaluate import main as evaluate
    from vlm4vla.evaluation.testing import write_tiny_bundle

    run = tmp_path / "run"
    for step, seed in ((100, 0), (200, 1)):
        write_tiny_bundle(run / "checkpoints" / f"step={step:06d}", gripper="signed", seed=seed)
    config_path = run / "checkpoints" / "step=000100" / "vla_config.json"
    assert json.loads(config_path.read_text())["backbone"]
    out = tmp_path / "eval"
    argv = ["--suite", "libero10", "--ckpt", str(run), "--tasks",
            "LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket",
            "--episodes-per-task", "1", "--max-steps", "6", "--modes", "full,single", "--out", str(out), "--quiet"]  # fmt: skip
    assert evaluate(argv) == 0
    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    values = _table_values(report)
    (text, value, source), = [v for k, v in values.items() if k[0] == "table2" and k[2] == "LIBERO-10"]
    assert value == best["success_rate"] and text == f"{100 * best['success_rate']:.1f}"
    assert source == f"{out} · {best['checkpoint']} · {best['mode']}"
    runs = load_runs([out])
    assert runs[0].protocol == "standard" and runs[0].suite == "libero10"
    grid_cells = {(c["checkpoint"], c["mode"]) for c in summary["cells"]}
    assert len(grid_cells) == 4 and np.isfinite([c["success_rate"] for c in summary["cells"]]).all()
    assert (report / "figure4_heatmap_1.png").is_file()


def test_learning_rate_runs_are_read_from_labels_into_table5(synthetic: dict[str, Path], tmp_path: Path) -> None:
    lr_run = _results(tmp_path, "calvin_qwen_lr", "calvin", "avg_len", {(5000, "full"): 3.6}, backbone="qwen3-vl-2b")
    out = tmp_path / "report"
    argv = ["report", str(synthetic["calvin_qwen"]), "--label", f"qwen3-vl-2b lr=1e-5={lr_run}", "--out", str(out)]
    assert main(argv) == 0
    values = _table_values(out)
    assert values[("table5", "qwen3-vl-2b", "Setting")][0] == "recipe LR"
    assert values[("table5", "qwen3-vl-2b lr=1e-5", "Setting")][0] == "lr 1e-5"
    assert values[("table5", "qwen3-vl-2b lr=1e-5", "(Δ vs. baseline)")][0] == "(-0.600)"  # 3.6 − 4.2

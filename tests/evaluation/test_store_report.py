from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from vlm4vla.evaluation import CellStore, StoreError, pick_best
from vlm4vla.evaluation.report import write_reports


def _rec(task: str, k: int, success: bool = True) -> dict:
    return {"task": task, "episode_id": k, "success": success, "steps": 3}


def test_append_load_and_truncated_tail_repaired(tmp_path: Path) -> None:
    store = CellStore(tmp_path / "cell", {"suite": "reach", "seed": 0})
    assert store.load() == {}
    store.append(_rec("a", 0))
    store.append(_rec("a", 1, False))
    store.append(_rec("a", 1, True))  # duplicate: ignored
    path = tmp_path / "cell" / "episodes.jsonl"
    with open(path, "ab") as f:  # a kill in the middle of a write
        f.write(b'{"task": "a", "episode_id": 2, "succ')
    again = CellStore(tmp_path / "cell", {"suite": "reach", "seed": 0})
    records = again.load()
    assert sorted(k for _, k in records) == ["0", "1"]
    assert path.read_bytes().endswith(b"}\n")  # the partial line is gone
    again.append(_rec("a", 2))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["episode_id"], r["success"]) for r in lines] == [(0, True), (1, False), (2, True)]


def test_damaged_middle_line_and_other_settings_refused(tmp_path: Path) -> None:
    store = CellStore(tmp_path, {"suite": "reach", "seed": 0, "max_steps": None})
    store.append(_rec("a", 0))
    with pytest.raises(StoreError, match="other settings .*max_steps None → 5"):
        CellStore(tmp_path, {"suite": "reach", "seed": 0, "max_steps": 5}).load()
    path = tmp_path / "episodes.jsonl"
    path.write_text('{"broken\n' + path.read_text())
    with pytest.raises(StoreError, match=r"episodes.jsonl:1: damaged"):
        CellStore(tmp_path, {"suite": "reach", "seed": 0}).load()


def _cell(ckpt: int, mode: str, value: float) -> dict:
    return {"checkpoint": f"step={ckpt}", "checkpoint_index": ckpt // 100, "step": ckpt, "mode": mode, "sr": value,
            "complete": True, "episodes": 4, "expected_episodes": 4, "headline_metric": "sr",
            "metrics": {"sr": value, "per_task": {"t": {"episodes": 4, "sr": value}}}}  # fmt: skip


def test_best_pick_rule() -> None:
    cells = [_cell(200, "full", 0.5), _cell(100, "single", 0.75), _cell(100, "half", 0.75), _cell(200, "full", 0.75)]
    best = pick_best(cells, "sr")
    assert (best["checkpoint"], best["mode"]) == ("step=100", "half")  # earlier ckpt, then fewer queries
    cells.append(_cell(300, "single", 0.8))
    assert pick_best(cells, "sr")["checkpoint"] == "step=300"  # higher metric wins over everything
    assert pick_best([_cell(100, "full", math.nan)], "sr") is None


def test_reports_written(tmp_path: Path) -> None:
    cells = [_cell(100, "full", 0.25), _cell(100, "half", 0.5), _cell(200, "full", 0.5), _cell(200, "half", 0.25)]
    best = write_reports(tmp_path, "reach", "sr", cells)
    assert (best["checkpoint"], best["mode"]) == ("step=100", "half")
    payload = json.loads((tmp_path / "best.json").read_text())
    assert payload["best"]["mode"] == "half" and "earlier checkpoint" in payload["rule"]
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["checkpoint"], r["mode"], float(r["sr"]), float(r["task:t"])) for r in rows][1] == (
        "step=100",
        "half",
        0.5,
        0.5,
    )
    assert "**0.500**" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files


def _strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"bare {name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_summary_json_writes_null_for_empty_cells(tmp_path: Path) -> None:
    empty = _cell(200, "full", math.nan)  # a cell without episodes yet
    empty["metrics"]["per_task"]["u"] = {"episodes": 0, "sr": math.inf}
    cells = [_cell(100, "full", 0.5), empty]
    write_reports(tmp_path, "reach", "sr", cells)
    summary = _strict_json((tmp_path / "summary.json").read_text())
    assert [c["sr"] for c in summary["cells"]] == [0.5, None]
    assert summary["cells"][1]["metrics"] == {"sr": None, "per_task": {"t": {"episodes": 4, "sr": None},
                                                                      "u": {"episodes": 0, "sr": None}}}  # fmt: skip
    assert summary["best"]["checkpoint"] == "step=100"
    assert _strict_json((tmp_path / "best.json").read_text())["best"]["sr"] == 0.5
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["sr"] for r in rows] == ["0.5", ""]  # an empty CSV field, not "nan"

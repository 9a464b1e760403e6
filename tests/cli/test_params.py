"""`vlm4vla params` reproduces the paper's Table 9 for every preset."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.backbones.test_construction import PAPER_BACKBONE_PARAMS
from vlm4vla.cli.main import main

# Paper Table 9 "Policy Head Size" at N=10 by LLM hidden size (paper-notes §1).
PAPER_HEAD_PARAMS = {
    "qwen2.5-vl-3b": 6_577_222,
    "qwen2.5-vl-7b": 11_689_798,
    "qwen3-vl-2b": 6_577_222,
    "qwen3-vl-4b": 8_019_270,
    "qwen3-vl-8b": 13_918_278,
    "qwen3-vl-30b-a3b": 6_577_222,
    "paligemma-3b": 6_577_222,
    "paligemma2-3b": 7_265_478,
    "kosmos-2": 6_577_222,
}
HIDDEN = {"qwen2.5-vl-7b": 3584, "qwen3-vl-4b": 2560, "qwen3-vl-8b": 4096, "paligemma2-3b": 2304}
UNTIED_LM_HEAD = {"qwen2.5-vl-7b": 3584 * 152064, "qwen3-vl-8b": 4096 * 151936, "qwen3-vl-30b-a3b": 2048 * 151936}


def _params_json(capsys, *args: str):
    assert main(["params", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_table9_for_every_preset(capsys):
    rows = {row["preset"]: row for row in _params_json(capsys, "--preset", "all")}
    assert set(rows) == set(PAPER_BACKBONE_PARAMS)
    for name, row in rows.items():
        hidden = HIDDEN.get(name, 2048)
        assert row["backbone_params"] == PAPER_BACKBONE_PARAMS[name], name
        assert row["head_params"] == PAPER_HEAD_PARAMS[name], name
        assert row["action_query_params"] == hidden, name
        total = PAPER_BACKBONE_PARAMS[name] + PAPER_HEAD_PARAMS[name] + hidden
        assert row["total_params"] == total
        assert row["trainable_params"] == total - UNTIED_LM_HEAD.get(name, 0), name


def test_chunk_size_changes_only_the_head(capsys):
    row = _params_json(capsys, "--preset", "qwen3-vl-2b", "--chunk", "4")
    # Only the last layers of the two towers depend on N: 257·6·(4-10) + 257·(4-10).
    assert row["head_params"] == 6_577_222 + 257 * 6 * (4 - 10) + 257 * (4 - 10)


def test_switches_reduce_trainable_counts(capsys):
    full = _params_json(capsys, "--preset", "paligemma-3b")["trainable_params"]
    frozen_vision = _params_json(capsys, "--preset", "paligemma-3b", "--freeze-vision")["trainable_params"]
    lora = _params_json(capsys, "--preset", "paligemma-3b", "--lora-rank", "8")
    assert frozen_vision < full
    assert lora["trainable_params"] == 6_577_222 + 2048 + lora["lora_params"]


def test_unknown_preset_exits_nonzero_listing_names(capsys):
    assert main(["params", "--preset", "qwen4-vl"]) == 2
    err = capsys.readouterr().err
    assert "qwen4-vl" in err and "qwen3-vl-2b" in err and err.count("\n") == 1


def test_console_script_prints_a_table():
    out = subprocess.run(
        [sys.executable, "-m", "vlm4vla.cli.main", "params", "--preset", "kosmos-2"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "kosmos-2" in out and "6,577,222" in out and "1,664,485,376" in out


@pytest.mark.parametrize("chunk", ["0", "-3"])
def test_bad_chunk_is_rejected(capsys, chunk):
    assert main(["params", "--preset", "kosmos-2", "--chunk", chunk]) == 2
    assert "--chunk" in capsys.readouterr().err


# ---------------------------------------------------------------------- --memory
def test_memory_markdown_has_one_row_per_recipe(capsys):
    from vlm4vla.training.memory import recipe_label
    from vlm4vla.training.recipes import list_recipes

    assert main(["params", "--memory", "--recipe", "all", "--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    labels = [recipe_label(p) for p in list_recipes()]
    assert lines[0].startswith("| recipe | GPUs |") and lines[1].startswith("|:---|---:")
    rows = lines[2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == labels
    assert all(row.count("|") == lines[0].count("|") for row in rows)
    fits = lines[0].split(" | ").index("fits 80 GB")
    assert all(row.split(" | ")[fits] in ("yes", "no") for row in rows)


def test_memory_json_for_one_recipe(capsys):
    from vlm4vla.training.recipes import RECIPES_DIR

    recipe = str(RECIPES_DIR / "calvin" / "qwen3-vl-2b.yaml")
    row = _params_json(capsys, "--memory", "--recipe", recipe)
    assert row["recipe"] == "calvin/qwen3-vl-2b" and row["total_params"] == 2_134_111_302
    assert row["world_size"] == 8 and row["fits"] is True
    halved = _params_json(capsys, "--memory", "--recipe", recipe, "--gpus", "16")
    assert halved["optimizer_gb"] == pytest.approx(row["optimizer_gb"] / 2)
    fused = _params_json(capsys, "--memory", "--recipe", recipe, "--fused-attention")
    assert fused["activations_gb"] < row["activations_gb"] and fused["params_gb"] == row["params_gb"]


def test_memory_table_names_each_recipe(capsys):
    from vlm4vla.training.recipes import RECIPES_DIR

    assert main(["params", "--memory", "--recipe", str(RECIPES_DIR / "bridge" / "kosmos-2.yaml")]) == 0
    out = capsys.readouterr().out
    assert "bridge/kosmos-2" in out and "fits 80 GB" in out and "A100-80GB" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "--recipe", "no/such/recipe.yaml"], "no such recipe file"),
        (["--memory", "--preset", "kosmos-2"], "--memory"),
        (["--recipe", "all"], "--recipe"),
        (["--preset", "kosmos-2", "--markdown"], "--markdown"),
        (["--memory", "--recipe", "all", "--gpus", "0"], "--gpus"),
        (["--memory", "--recipe", "all", "--lora-rank", "8"], "--lora-rank"),
    ],
)
def test_memory_usage_errors_exit_2_with_one_line(capsys, args, message):
    assert main(["params", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_preset_and_recipe_are_mutually_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["params", "--preset", "kosmos-2", "--recipe", "all", "--memory"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err

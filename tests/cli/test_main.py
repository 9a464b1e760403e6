"""The `vlm4vla` entry point dispatches LightningCLI and the library's own subcommands."""

from __future__ import annotations

import json

import pytest

from vlm4vla.cli.main import main
from vlm4vla.data.synthetic import write_libero_hdf5


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "params", "stats", "export"):
        assert command in out


def test_unknown_subcommand_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_stats_subcommand_computes_and_caches(tmp_path, capsys):
    root = write_libero_hdf5(tmp_path / "libero_10", num_tasks=1, demos_per_task=3, steps=10)
    assert main(["stats", "libero", str(root)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["type"] == "quantile" and len(stats["q01"]) == 6
    assert (root / "vlm4vla_stats.json").is_file()
    assert main(["stats", "libero", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_export_of_a_missing_checkpoint_is_one_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.ckpt" in err[0]
    assert not (tmp_path / "out").exists()


def test_fit_print_config_resolves_extends_and_data_root(tmp_path, capsys, monkeypatch):
    from vlm4vla.training.recipes import RECIPES_DIR

    monkeypatch.setenv("VLM4VLA_DATA_ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(RECIPES_DIR / "ablations" / "freeze-vision.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "freeze_vision_encoder: true" in out and "backbone: qwen2.5-vl-3b" in out
    assert f"root: {tmp_path}/calvin/task_ABC_D" in out
    assert "ModelParallelStrategy" in out


def test_library_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from vlm4vla.cli import params

    assert main(["params", "--preset", "qwen3-vl-2b", "--chunk", "0"]) == 2
    assert capsys.readouterr().err == "vlm4vla params: error: --chunk: expected a positive integer, got 0\n"
    assert main(["params", "--preset", "no-such-vlm"]) == 2
    assert capsys.readouterr().err.startswith("vlm4vla params: error: unknown preset 'no-such-vlm'")

    def broken(args):
        raise ValueError("an internal bug")  # not a library error: must not be swallowed

    monkeypatch.setattr(params, "_run_counts", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["params", "--preset", "qwen3-vl-2b"])

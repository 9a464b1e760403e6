"""Suite options, recorded settings, protocols and shared envs, on the ``reach-shared`` double."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vlm4vla.cli.evaluate import main, parse_suite_options
from vlm4vla.errors import ConfigError
from vlm4vla.evaluation.plugin import EvaluationError, load_evaluator
from vlm4vla.evaluation.testing import write_tiny_bundle


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main([*argv, "--quiet"])
    return code, capsys.readouterr().err.strip()


def _records(out: Path, ckpt: str = "step=000100", mode: str = "full") -> list[dict[str, Any]]:
    lines = (out / ckpt / mode / "episodes.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return sorted(
        ({k: v for k, v in r.items() if k != "seconds"} for r in records), key=lambda r: (r["task"], r["episode_id"])
    )


def _base(run_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--suite", "reach-shared", "--ckpt", str(run_dir / "checkpoints" / "step=000100"), "--out", str(out), *extra]


# -------------------------------------------------------------------- options
def test_suite_options_parse_as_yaml_scalars() -> None:
    assert parse_suite_options(["camera_size=256", "center_crop=false", "backend=maniskill3", "x=null", "r=0.5"]) == {
        "camera_size": 256, "center_crop": False, "backend": "maniskill3", "x": None, "r": 0.5,
    }  # fmt: skip
    assert parse_suite_options([], "released") == {"protocol": "released"}
    for bad, match in (
        (["camera_size"], "expected KEY=VALUE"),
        (["=3"], "expected KEY=VALUE"),
        (["a=1", "a=2"], "given twice"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_suite_options(bad)
    with pytest.raises(ConfigError, match="contradicts"):
        parse_suite_options(["protocol=standard"], "released")


def test_options_reach_the_constructor_and_typos_are_one_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_evaluator("reach-shared", {"gain": 2}).gain == 2.0
    with pytest.raises(EvaluationError, match=r"has no option gian \(options: gain, protocol\)"):
        load_evaluator("reach-shared", {"gian": 2})
    code, err = _run(capsys, *_base(run_dir, tmp_path / "a", "--suite-option", "gain=abc"))
    assert code == 2 and len(err.splitlines()) == 1 and "gain='abc'" in err, err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        main(_base(run_dir, tmp_path / "b", "--protocol", "paper"))
    assert exit_info.value.code == 2 and "invalid choice: 'paper'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").rglob("episodes.jsonl"))

    # The option changes outcomes: gain 0 never moves, gain 1 reaches some goals.
    code, err = _run(capsys, *_base(run_dir, tmp_path / "g0", "--suite-option", "gain=0", "--modes", "full"))
    assert code == 0, err
    code, err = _run(capsys, *_base(run_dir, tmp_path / "g1", "--modes", "full"))
    assert code == 0, err
    still = _records(tmp_path / "g0")
    assert all(r["final_x"] == pytest.approx(r_start) for r, r_start in zip(still, _starts(still), strict=True))
    assert [r["final_x"] for r in _records(tmp_path / "g1")] != [r["final_x"] for r in still]


def _starts(records: list[dict[str, Any]]) -> list[float]:
    evaluator = load_evaluator("reach-shared")
    specs = {(t, s["episode_id"]): s["start"] for t in evaluator.tasks() for s in evaluator.episodes(t)}
    return [specs[(r["task"], r["episode_id"])] for r in records]


# -------------------------------------------------------------------- recorded settings
def test_settings_and_versions_are_recorded_and_a_mismatched_resume_is_refused(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, err = _run(capsys, *_base(run_dir, out, "--suite-option", "gain=2", "--modes", "full", "--episodes-per-task", "2"))
    assert code == 0, err
    meta = json.loads((out / "step=000100" / "full" / "meta.json").read_text())
    assert meta["protocol"] == "standard" and meta["suite"] == "reach-shared"
    assert meta["settings"] == {"protocol": "standard", "gain": 2.0}
    assert meta["simulator"] == {"reach-sim": "1.0"} and meta["chunk_size"] == 4
    assert all(r["protocol"] == "standard" for r in _records(out))
    episodes = (out / "step=000100" / "full" / "episodes.jsonl").read_bytes()

    code, err = _run(capsys, *_base(run_dir, out, "--suite-option", "gain=3", "--modes", "full", "--episodes-per-task", "3"))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "settings.gain 2.0 → 3.0" in err and "use another --out" in err, err
    assert (out / "step=000100" / "full" / "episodes.jsonl").read_bytes() == episodes  # nothing lost or added

    code, err = _run(capsys, *_base(run_dir, out, "--suite-option", "gain=2", "--protocol", "released", "--modes", "full"))
    assert code == 2 and "protocol 'standard' → 'released'" in err, err

    # A cell written before settings were recorded cannot be resumed as if it matched.
    meta_path = out / "step=000100" / "full" / "meta.json"
    old = {k: v for k, v in meta.items() if k not in ("settings", "simulator", "protocol")}
    meta_path.write_text(json.dumps(old))
    code, err = _run(capsys, *_base(run_dir, out, "--suite-option", "gain=2", "--modes", "full"))
    assert code == 2 and "does not record protocol, settings.protocol, settings.gain, simulator.reach-sim" in err, err


# -------------------------------------------------------------------- protocols
def test_the_protocol_chooses_the_modes_and_is_recorded(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, err = _run(capsys, *_base(run_dir, out, "--protocol", "released", "--episodes-per-task", "2"))
    assert code == 0, err
    assert sorted(p.name for p in (out / "step=000100").iterdir() if p.is_dir()) == ["full", "half"]
    summary = json.loads((out / "summary.json").read_text())
    assert {c["mode"] for c in summary["cells"]} == {"full", "half"}
    assert all(r["protocol"] == "released" for r in _records(out, mode="half"))


def test_a_shared_env_group_resumed_replays_its_finished_episodes(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Episodes of a shared env depend on the ones before them: a group interrupted after two
    episodes and resumed must give the records of an uninterrupted run (the finished ones are
    replayed to bring the env to the same state, and not stored twice)."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    code, err = _run(capsys, *_base(run_dir, whole, "--protocol", "released", "--modes", "full", "--episodes-per-task", "4"))
    assert code == 0, err
    reference = _records(whole)
    assert [r["episodes_in_env"] for r in reference if r["task"] == "reach left"] == [1, 2, 3, 4]
    assert len({r["texture_sum"] for r in reference}) > 2  # the env's state moves on episode by episode
    assert {r["seed"] for r in reference} == {0}  # a shared env is seeded with the base seed

    code, err = _run(capsys, *_base(run_dir, resumed, "--protocol", "released", "--modes", "full", "--episodes-per-task", "2"))
    assert code == 0, err
    first_two = (resumed / "step=000100" / "full" / "episodes.jsonl").read_bytes()
    code, err = _run(capsys, *_base(run_dir, resumed, "--protocol", "released", "--modes", "full", "--episodes-per-task", "4"))
    assert code == 0, err
    assert (resumed / "step=000100" / "full" / "episodes.jsonl").read_bytes().startswith(first_two)
    assert _records(resumed) == reference  # 8 records, none duplicated, identical to the uninterrupted run

    # Two workers: each group stays in one worker, so the records do not change.
    parallel = tmp_path / "parallel"
    code, err = _run(
        capsys,
        *_base(run_dir, parallel, "--protocol", "released", "--modes", "full", "--episodes-per-task", "4"),
        "--workers", "2", "--max-batch", "1",
    )  # fmt: skip
    assert code == 0, err
    assert _records(parallel) == reference


# -------------------------------------------------------------------- bundles without statistics
def test_a_bundle_without_action_statistics_is_refused_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write_tiny_bundle(tmp_path / "raw")  # no normaliser
    argv = ["--suite", "reach", "--ckpt", str(bundle), "--out", str(tmp_path / "out"), "--episodes-per-task", "1",
            "--modes", "full"]  # fmt: skip
    code, err = _run(capsys, *argv)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "no action statistics" in err and "--allow-unnormalized" in err and str(bundle) in err
    assert not list((tmp_path / "out").rglob("episodes.jsonl"))
    code, err = _run(capsys, *argv, "--allow-unnormalized")
    assert code == 0, err


def test_a_plugin_sharing_envs_without_reuse_env_is_refused_before_any_episode(run_dir: Path, tmp_path: Path) -> None:
    from tests.evaluation.doubles import SharedReachEvaluator
    from vlm4vla.evaluation.plugin import Evaluator
    from vlm4vla.evaluation.sweep import SweepSettings, resolve_checkpoints, run_sweep

    class NoReuse(SharedReachEvaluator):
        name = "reach-shared-noreuse"
        reuse_env = Evaluator.reuse_env

    assert SharedReachEvaluator().reuses_envs and not NoReuse().reuses_envs
    checkpoints = resolve_checkpoints(run_dir / "checkpoints" / "step=000100")
    with pytest.raises(EvaluationError, match="does not override reuse_env"):
        run_sweep(NoReuse(protocol="released"), checkpoints, tmp_path / "out", SweepSettings(modes=["full"]))
    assert not list((tmp_path / "out").rglob("episodes.jsonl"))
    # without groups (standard protocol) nothing is asked of it
    run_sweep(NoReuse(), checkpoints, tmp_path / "std", SweepSettings(modes=["full"], episodes_per_task=1))

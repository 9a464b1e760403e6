"""CALVIN plugin logic without calvin_env: a test double with calvin_env's env interface
(``reset(robot_obs=, scene_obs=)``, ``step`` → (obs, reward, done, info), ``get_info``) and a
task oracle that reports a subtask after scripted numbers of steps."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import vlm4vla_calvin.env as calvin_env_setup
import yaml
from vlm4vla_calvin import GROUP, CalvinEpisode, CalvinEvaluator, load_eval_set, to_env_action

from vlm4vla.evaluation import EvaluationError, SimulatorImportError
from vlm4vla.evaluation.client import PolicyClient
from vlm4vla.evaluation.testing import EvaluatorContract, ScriptedPolicy


class FakeCalvinEnv:
    """calvin_env's ``PlayTableSimEnv`` interface; the observation encodes the step counter."""

    def __init__(self, size: int = 10) -> None:
        self.size = size
        self.t = 0
        self.calls: list[tuple[str, Any]] = []
        self.actions: list[np.ndarray] = []
        self.closed = False

    def _obs(self) -> dict[str, Any]:
        image = ((np.arange(self.size * self.size * 3).reshape(self.size, self.size, 3) * 5 + self.t) % 251).astype(
            np.uint8
        )
        return {
            "rgb_obs": {"rgb_static": image, "rgb_gripper": np.zeros((4, 4, 3), np.uint8)},
            "depth_obs": {},
            "robot_obs": np.full(15, float(self.t)),
            "scene_obs": np.zeros(24),
        }

    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> dict[str, Any]:
        self.calls.append(("reset", (np.array(robot_obs), np.array(scene_obs))))
        self.t = 0
        return self._obs()

    def get_info(self) -> dict[str, Any]:
        self.calls.append(("get_info", self.t))
        return {"t": self.t}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], int, bool, dict[str, Any]]:
        assert self.calls and self.calls[0][0] == "reset", "stepped before reset"
        assert len(action) == 7 and action[6] in (-1, 1)  # calvin_env asserts the gripper is exactly ±1
        self.calls.append(("step", self.t))
        self.actions.append(np.array(action))
        self.t += 1
        return self._obs(), 0, False, {"t": self.t}

    def close(self) -> None:
        self.closed = True


class ScriptedOracle:
    """``get_task_info_for_set``: the subtask is reported once ``after[subtask]`` steps passed since
    its ``start_info`` (never for subtasks not in ``after``)."""

    def __init__(self, after: Mapping[str, int]) -> None:
        self.after = dict(after)
        self.queries: list[tuple[int, int, frozenset[str]]] = []

    def get_task_info_for_set(self, start_info: dict, end_info: dict, task_filter: set) -> set:
        self.queries.append((start_info["t"], end_info["t"], frozenset(task_filter)))
        return {t for t in task_filter if t in self.after and end_info["t"] - start_info["t"] >= self.after[t]}


def _episode(env: FakeCalvinEnv, oracle: ScriptedOracle, k: int = 1) -> CalvinEpisode:
    eval_set = load_eval_set()
    seq = eval_set.sequences[k]
    return CalvinEpisode(
        sim=env, oracle=oracle, sequence=k, robot_obs=np.asarray(eval_set.robot_obs), scene_obs=np.asarray(seq.scene_obs),
        subtasks=seq.subtasks, instructions={t: eval_set.instruction(t) for t in seq.subtasks},
        image_size=getattr(env, "size", 224),  # the policy's size = the camera's: the frame itself
    )  # fmt: skip


SEQ1 = ("turn_off_led", "push_into_drawer", "lift_blue_block_drawer", "place_in_slider", "close_drawer")
SPEC = {"task": GROUP, "episode_id": 1, "subtasks": list(SEQ1)}
ACTION = [[0.1, -0.2, 0.3, 0.0, 0.05, -0.05, 1.0]]


class TestCalvinContract(EvaluatorContract):
    suite = "calvin"
    simulator_modules = ("calvin_env", "pybullet", "hydra", "omegaconf")

    def hide_simulator(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(calvin_env_setup, "calvin_env_installed", lambda: False)
        monkeypatch.setitem(sys.modules, "calvin_env", None)  # importing it fails even where it is installed

    def fake_env(self, spec: Mapping[str, Any]) -> CalvinEpisode:
        return _episode(FakeCalvinEnv(), ScriptedOracle({}), int(spec["episode_id"]))


# -------------------------------------------------------------------- rollout logic
def test_full_chain_resets_once_and_feeds_rgb_static_with_each_instruction() -> None:
    env, oracle, policy = (
        FakeCalvinEnv(),
        ScriptedOracle(dict(zip(SEQ1, [3, 5, 1, 4, 2], strict=True))),
        ScriptedPolicy(ACTION),
    )
    record = CalvinEvaluator().run_episode(_episode(env, oracle), policy, SPEC)
    assert record["success"] is True and record["completed"] == 5 and record["sequence"] == 1
    assert [(s["task"], s["success"], s["steps"]) for s in record["subtasks"]] == list(
        zip(SEQ1, [True] * 5, [3, 5, 1, 4, 2], strict=True)
    )
    assert record["steps"] == 15 and len(env.actions) == 15
    # one physical reset per sequence, to the shipped (robot_obs, scene_obs)
    resets = [c for c in env.calls if c[0] == "reset"]
    assert len(resets) == 1
    eval_set = load_eval_set()
    np.testing.assert_allclose(resets[0][1][0], eval_set.robot_obs)
    np.testing.assert_allclose(resets[0][1][1], eval_set.sequences[1].scene_obs)
    # start info is taken at the start of each subtask, after the previous one's last step (no re-reset)
    assert [c[1] for c in env.calls if c[0] == "get_info"] == [0, 3, 8, 9, 13]
    assert {q[2] for q in oracle.queries} == {frozenset({t}) for t in SEQ1}  # the oracle checks one subtask at a time
    # the policy saw rgb_static of the current observation (step counter t) and the subtask's instruction
    for t, image in enumerate(policy.images):
        env.t = t
        np.testing.assert_array_equal(image, env._obs()["rgb_obs"]["rgb_static"])
    expected = [eval_set.instruction(t) for t, n in zip(SEQ1, [3, 5, 1, 4, 2], strict=True) for _ in range(n)]
    assert policy.instructions == expected
    assert policy.instructions[0] == "press the button to turn off the led light"
    assert record["image_size"] == [10, 10] and record["final_robot_obs"] == [15.0] * 15


def test_chain_stops_at_the_first_failure_after_the_step_limit() -> None:
    env, policy = FakeCalvinEnv(), ScriptedPolicy(ACTION)
    oracle = ScriptedOracle({"turn_off_led": 2, "push_into_drawer": 6})  # the third subtask never succeeds
    evaluator = CalvinEvaluator()
    record = evaluator.run_episode(_episode(env, oracle), policy, SPEC)
    assert record["success"] is False and record["completed"] == 2
    assert [(s["task"], s["success"], s["steps"]) for s in record["subtasks"]] == [
        ("turn_off_led", True, 2), ("push_into_drawer", True, 6), ("lift_blue_block_drawer", False, 360),
    ]  # fmt: skip
    assert record["steps"] == 368 and len(env.actions) == 368  # nothing ran after the failure

    # --max-steps caps each subtask (never raises the protocol's 360)
    env2 = FakeCalvinEnv()
    capped = evaluator.run_episode(
        _episode(env2, ScriptedOracle({"turn_off_led": 2})), ScriptedPolicy(ACTION), SPEC, max_steps=7
    )
    assert [(s["success"], s["steps"]) for s in capped["subtasks"]] == [(True, 2), (False, 7)]
    assert CalvinEvaluator(max_steps=4).run_episode(
        _episode(FakeCalvinEnv(), ScriptedOracle({})), ScriptedPolicy(ACTION), SPEC, max_steps=100
    )["subtasks"] == [{"task": "turn_off_led", "instruction": "press the button to turn off the led light",
                       "success": False, "steps": 4}]  # fmt: skip
    assert (
        evaluator.run_episode(_episode(FakeCalvinEnv(), ScriptedOracle({})), ScriptedPolicy(ACTION), SPEC)["completed"]
        == 0
    )


def test_the_action_queue_is_reset_between_subtasks() -> None:
    policy = ScriptedPolicy(ACTION)
    CalvinEvaluator().run_episode(
        _episode(FakeCalvinEnv(), ScriptedOracle(dict(zip(SEQ1, [3, 5, 1, 4, 2], strict=True)))), policy, SPEC
    )
    # reset before every subtask, i.e. before its first act
    assert (
        "".join("R" if e == "reset" else "a" for e in policy.events)
        == "R" + "aaa" + "R" + "aaaaa" + "R" + "a" + "R" + "aaaa" + "R" + "aa"
    )

    # with the real client (chunk 4, full): leftovers of a subtask are never executed in the next one
    queries: list[tuple[int, str]] = []

    def query(image: np.ndarray, instruction: str) -> np.ndarray:
        queries.append((int(image[0, 0, 0]), instruction))
        chunk = np.zeros((4, 7), np.float32)
        chunk[:, 0] = len(queries) / 10 + np.arange(4) / 100  # action i of query q: x = q/10 + i/100 (within ±1)
        chunk[:, 6] = -1.0
        return chunk

    client = PolicyClient(query, mode="full", chunk_size=4)
    env = FakeCalvinEnv()
    record = CalvinEvaluator().run_episode(
        _episode(env, ScriptedOracle(dict(zip(SEQ1, [3, 5, 1, 4, 2], strict=True)))), client, SPEC
    )
    steps = [s["steps"] for s in record["subtasks"]]
    assert client.queries == sum(-(-n // 4) for n in steps) == 1 + 2 + 1 + 1 + 1
    eval_set = load_eval_set()
    assert [q[1] for q in queries] == [
        eval_set.instruction(t) for t, n in zip(SEQ1, steps, strict=True) for _ in range(-(-n // 4))
    ]
    xs = [round(float(a[0]) * 100) for a in env.actions]
    # subtask 1: query 1 (3 of 4 actions); subtask 2 starts with a fresh query 2, then 3; ...
    assert xs == [10, 11, 12, 20, 21, 22, 23, 30, 40, 50, 51, 52, 53, 60, 61]
    assert all(a[6] == -1.0 for a in env.actions)


def test_actions_are_clipped_and_the_gripper_mapped_to_exactly_plus_minus_one() -> None:
    out = to_env_action(np.array([2.0, -3.0, 0.5, 0.0, -0.2, 1.5, 0.7], dtype=np.float32))
    np.testing.assert_allclose(out, [1.0, -1.0, 0.5, 0.0, -0.2, 1.0, 1.0], rtol=1e-6)
    assert to_env_action(np.zeros(7))[6] == -1.0  # 0 (a {0,1} bundle's "close") → −1 close
    assert to_env_action(np.array([0, 0, 0, 0, 0, 0, 1.0]))[6] == 1.0  # +1 = open in CALVIN
    with pytest.raises(EvaluationError, match="7-d"):
        to_env_action(np.zeros(8))
    with pytest.raises(EvaluationError, match="non-finite"):
        to_env_action(np.array([np.nan] * 7))
    env = FakeCalvinEnv()
    CalvinEvaluator().run_episode(
        _episode(env, ScriptedOracle({"turn_off_led": 1})), ScriptedPolicy([[0.9, 0.65, -0.65, 0.1, -5.0, 0.0, -0.3]]), SPEC,
        max_steps=2,
    )  # fmt: skip
    np.testing.assert_allclose(env.actions[0], [0.9, 0.65, -0.65, 0.1, -1.0, 0.0, -1.0], rtol=1e-6)


class _PyBulletLikeSim(FakeCalvinEnv):
    """Closes like ``PlayTableSimEnv``: disconnects ``cid`` unless it is negative."""

    def __init__(self) -> None:
        super().__init__()
        self.cid = 0
        self.disconnects = 0

    def close(self) -> None:
        if self.cid >= 0:
            self.disconnects += 1


def test_closing_an_episode_disconnects_once_and_drops_the_sim() -> None:
    sim = _PyBulletLikeSim()
    episode = _episode(sim, ScriptedOracle({}))  # type: ignore[arg-type]
    CalvinEvaluator().close_env(episode)
    assert sim.disconnects == 1 and sim.cid == -1 and episode.sim is None
    sim.close()  # what PlayTableSimEnv.__del__ does later: no second disconnect of a reused client id
    assert sim.disconnects == 1
    CalvinEvaluator().close_env(episode)  # idempotent


def test_a_failed_oracle_build_leaves_no_stale_disconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_env closes the sim when the task oracle cannot be built; the sim must be marked
    disconnected (cid = −1) like CalvinEpisode.close does, or its later __del__ cuts the next env."""
    sim = _PyBulletLikeSim()
    monkeypatch.setattr(calvin_env_setup, "make_sim", lambda **kwargs: sim)

    def broken_oracle() -> Any:
        raise SimulatorImportError("calvin_env's task config is missing")

    monkeypatch.setattr(calvin_env_setup, "make_task_oracle", broken_oracle)
    with pytest.raises(SimulatorImportError, match="task config"):
        CalvinEvaluator(use_egl=False).make_env(SPEC, seed=0)
    assert sim.disconnects == 1 and sim.cid == -1
    sim.close()  # PlayTableSimEnv.__del__ later: must not disconnect the id pybullet gave to the next env
    assert sim.disconnects == 1


class _EditableFinder:
    """What setuptools' editable install appends to ``sys.meta_path``: ``calvin_env`` → the clone's package."""

    def __init__(self, clone: Path) -> None:
        self.clone = clone

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        import importlib.machinery

        return importlib.machinery.PathFinder.find_spec(name, [str(self.clone)]) if name == "calvin_env" else None


def _fake_editable_install(site: Path, clone: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``pip install -e clone`` leaves: a dist-info whose direct_url.json names the clone
    (PEP 610), and the editable finder at the end of ``sys.meta_path``."""
    info = site / "calvin_env-1.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: calvin_env\nVersion: 1.0.1\n")
    (info / "direct_url.json").write_text(json.dumps({"url": clone.resolve().as_uri(), "dir_info": {"editable": True}}))
    # A real editable calvin_env on this machine (a path entry or a finder) must not answer instead.
    monkeypatch.setattr(sys, "path", [e for e in sys.path if not (Path(e or ".") / "calvin_env" / "__init__.py").is_file()])
    others = [f for f in sys.meta_path if "calvin_env" not in str(getattr(f, "__module__", ""))]  # a class or an instance
    monkeypatch.setattr(sys, "meta_path", [*others, _EditableFinder(clone)])
    monkeypatch.syspath_prepend(str(site))


def test_the_clone_is_found_from_the_installed_distribution_and_shadowing_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's layout: `git clone …calvin_env; pip install -e calvin_env`, run from the parent.
    work = tmp_path / "work"
    clone = work / "calvin_env"
    _fake_clone(clone)
    _fake_editable_install(tmp_path / "site", clone, monkeypatch)
    assert calvin_env_setup.editable_clone() == clone.resolve()
    assert calvin_env_setup.calvin_env_clone() == clone.resolve()  # run from elsewhere: fine

    # `python -m …` from `work`: the cwd is on sys.path and `calvin_env` there is the clone's top
    # folder, a namespace package (no __init__.py) that the path finder returns before the
    # editable finder is asked: it shadows the editable install.
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    with pytest.raises(SimulatorImportError) as err:
        calvin_env_setup.calvin_env_clone()
    message = str(err.value)
    assert "\n" not in message and "shadows the package" in message and str(clone.resolve() / "calvin_env") in message
    assert "not installed editable" not in message
    assert "calvin_env" not in sys.modules


# -------------------------------------------------------------------- resume through the harness
class FakeSimCalvinEvaluator(CalvinEvaluator):
    """The real plugin with the simulator and oracle replaced by the test doubles."""

    name = "calvin-fake"

    def check_available(self) -> None:
        pass

    def make_env(self, spec: Mapping[str, Any], *, seed: int) -> CalvinEpisode:
        k = int(spec["episode_id"])
        subtasks = load_eval_set().sequences[k].subtasks
        # subtask i of sequence k needs (k + i) % 4 + 1 steps; lifting never succeeds
        after = {t: (k + i) % 4 + 1 for i, t in enumerate(subtasks) if not t.startswith("lift")}
        return _episode(FakeCalvinEnv(), ScriptedOracle(after), k)


def _predict(images: list[np.ndarray], instructions: list[str]) -> np.ndarray:
    out = np.zeros((len(images), 4, 7), np.float32)
    for b, image in enumerate(images):
        out[b, :, 0] = float(image.mean()) / 255.0
        out[b, :, 6] = 1.0
    return out


def test_resume_runs_only_the_missing_sequences(tmp_path: Path) -> None:
    from vlm4vla.evaluation.sweep import Checkpoint, SweepSettings, run_sweep

    evaluator = FakeSimCalvinEvaluator(max_steps=8)
    ckpt = Checkpoint("fake", tmp_path / "bundle", None, {"chunk_size": 4, "action_dim": 7})
    out = tmp_path / "out"

    def run(k: int) -> Any:
        settings = SweepSettings(modes=["full"], episodes_per_task=k, allow_unnormalized=True)
        return run_sweep(evaluator, [ckpt], out, settings, policy_loader=lambda c: _predict)

    first = run(2)
    assert (first.ran, first.skipped) == (2, 0)
    files = sorted(out.glob("*/*/episodes.jsonl"))
    assert len(files) == 1
    before = files[0].read_text().splitlines()
    second = run(3)
    assert (second.ran, second.skipped) == (1, 2)
    lines = files[0].read_text().splitlines()
    assert lines[:2] == before and len(lines) == 3
    records = sorted((json.loads(line) for line in lines), key=lambda r: r["episode_id"])
    assert [r["episode_id"] for r in records] == [0, 1, 2]
    for r in records:
        k = r["episode_id"]
        subtasks = load_eval_set().sequences[k].subtasks
        assert [s["task"] for s in r["subtasks"]] == list(subtasks[: len(r["subtasks"])])
        assert r["completed"] == sum(s["success"] for s in r["subtasks"])
        assert r["policy_queries"] == sum(-(-s["steps"] // 4) for s in r["subtasks"])
    # sequence 0 lifts the red block 3rd → 2 completed; sequence 1 lifts the blue block 3rd → 2; 2 has no lift first
    assert [r["completed"] for r in records[:2]] == [2, 2]
    summary = json.loads((out / "summary.json").read_text())["cells"][0]
    assert summary["headline_metric"] == "avg_len"
    assert summary["avg_len"] == pytest.approx(np.mean([r["completed"] for r in records]))
    assert summary["metrics"]["chain_1"] == pytest.approx(np.mean([r["completed"] >= 1 for r in records]))
    assert set(summary["metrics"]["per_subtask"]) == {s["task"] for r in records for s in r["subtasks"]}


# -------------------------------------------------------------------- env configuration (no calvin_env)
def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))


def _fake_clone(root: Path) -> Path:
    """A calvin_env clone layout: ``calvin_env/__init__.py`` next to ``conf/`` (the real groups' shapes)."""
    (root / "calvin_env").mkdir(parents=True)
    (root / "calvin_env" / "__init__.py").write_text("raise RuntimeError('calvin_env must not be imported')\n")
    conf = root / "conf"
    _write(conf / "env" / "play_table_env.yaml", {
        "_target_": "calvin_env.envs.play_table_env.PlayTableSimEnv", "_recursive_": False, "cameras": "${cameras}",
        "seed": 0, "bullet_time_step": 240.0, "use_vr": "${use_vr}", "show_gui": False, "robot_cfg": "${robot}",
        "scene_cfg": "${scene}", "use_scene_info": False, "use_egl": True, "control_freq": 30,
    })  # fmt: skip
    _write(conf / "cameras" / "cameras" / "static.yaml", {"name": "static", "width": 200, "height": 200, "fov": 10})
    _write(conf / "cameras" / "cameras" / "gripper.yaml", {"name": "gripper", "width": 84, "height": 84, "fov": 75})
    _write(conf / "cameras" / "cameras" / "tactile.yaml", {"name": "tactile", "width": 120, "height": 160})
    _write(conf / "robot" / "panda.yaml", {"filename": "franka_panda/panda.urdf", "gripper_joint_ids": [9, 10],
                                          "tcp_link_id": 13, "euler_obs": True})  # fmt: skip
    _write(conf / "robot" / "panda_longer_finger.yaml", {
        "defaults": ["panda"], "filename": "franka_panda/panda_longer_finger.urdf", "gripper_joint_ids": [9, 11],
        "tcp_link_id": 15,
    })  # fmt: skip
    _write(conf / "scene" / "calvin_scene_D.yaml", {"data_path": "${data_path}", "euler_obs": "${robot.euler_obs}",
                                                   "robot_base_position": [-0.34, -0.46, 0.24]})  # fmt: skip
    _write(conf / "scene" / "calvin_scene_A.yaml", {"data_path": "${data_path}", "robot_base_position": [0, 0, 0]})
    _write(conf / "tasks" / "new_playtable_tasks.yaml", {"_target_": "calvin_env.envs.tasks.Tasks", "tasks": {}})
    return conf


def test_env_config_is_scene_d_with_static_200_and_gripper_84_no_gui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = _fake_clone(tmp_path / "clone")
    monkeypatch.syspath_prepend(str(tmp_path / "clone"))
    monkeypatch.setattr(calvin_env_setup, "editable_clone", lambda: None)  # not a real install's metadata
    assert calvin_env_setup.calvin_env_installed()
    assert calvin_env_setup.calvin_conf_dir() == conf.resolve()  # found, not imported
    assert "calvin_env" not in sys.modules

    cfg = calvin_env_setup.env_config(conf, use_egl=False, seed=7)
    assert set(cfg["cameras"]) == {"static", "gripper"}
    assert (cfg["cameras"]["static"]["width"], cfg["cameras"]["static"]["height"]) == (200, 200)
    assert (cfg["cameras"]["gripper"]["width"], cfg["cameras"]["gripper"]["height"]) == (84, 84)
    # robot: panda_longer_finger over its panda defaults
    assert cfg["robot"] == {"filename": "franka_panda/panda_longer_finger.urdf", "gripper_joint_ids": [9, 11],
                            "tcp_link_id": 15, "euler_obs": True}  # fmt: skip
    assert cfg["scene"]["robot_base_position"] == [-0.34, -0.46, 0.24]  # scene D
    env = cfg["env"]
    assert env["_target_"] == "calvin_env.envs.play_table_env.PlayTableSimEnv"
    assert (env["show_gui"], env["use_vr"], env["use_scene_info"], env["use_egl"], env["seed"]) == (
        False,
        False,
        True,
        False,
        7,
    )
    assert (env["robot_cfg"], env["scene_cfg"], env["cameras"]) == ("${robot}", "${scene}", "${cameras}")
    assert cfg["data_path"] == "data" and cfg["use_vr"] is False
    assert calvin_env_setup.env_config(conf, use_egl=True)["env"]["use_egl"] is True


def test_dataset_config_and_renderer_selection(tmp_path: Path) -> None:
    merged = tmp_path / "task_ABC_D" / "validation" / ".hydra" / "merged_config.yaml"
    _write(merged, {"env": {}})
    for given in (merged, merged.parent.parent, merged.parent.parent.parent):
        assert calvin_env_setup.resolve_dataset_config(given) == merged
    with pytest.raises(FileNotFoundError, match="config_path="):
        calvin_env_setup.resolve_dataset_config(tmp_path / "nowhere")
    assert calvin_env_setup.resolve_use_egl(True) is True
    assert calvin_env_setup.resolve_use_egl(False) is False
    assert calvin_env_setup.resolve_use_egl(None) is calvin_env_setup.egl_available()
    with pytest.raises(ValueError, match="use_egl"):
        CalvinEvaluator(use_egl="maybe")  # type: ignore[arg-type]


def test_options_are_constructor_arguments_recorded_as_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlm4vla.evaluation.plugin import load_evaluator

    evaluator = load_evaluator("calvin", {"config_path": str(tmp_path / "ds"), "use_egl": False, "max_steps": 100})
    assert evaluator.settings() == {
        "protocol": "standard", "max_steps": 100, "config_path": str(tmp_path / "ds"), "use_egl": False,
        "env_lifetime": "sequence",
    }  # fmt: skip
    assert CalvinEvaluator(protocol="released").settings()["env_lifetime"] == "8 ranks"
    assert CalvinEvaluator().protocol_modes() == ("full", "half", "single")
    assert CalvinEvaluator(protocol="released").protocol_modes() == ("full",)
    monkeypatch.setattr(calvin_env_setup, "calvin_env_installed", lambda: True)
    monkeypatch.setattr(calvin_env_setup, "calvin_env_clone", lambda: tmp_path)
    with pytest.raises(SimulatorImportError, match="no merged_config.yaml"):
        evaluator.check_available()


def test_released_protocol_groups_sequences_by_rank_as_the_released_ddp_script() -> None:
    """eval/calvin/evaluate_ddp-v2.py: ``eval_sequences[rank::world_size]`` per rank, one env each."""
    released, standard = CalvinEvaluator(protocol="released"), CalvinEvaluator()
    specs = released.episodes(GROUP, episodes_per_task=20)
    groups = [released.env_group({**s, "task": GROUP}) for s in specs]
    assert groups[:10] == [f"rank{k}" for k in range(8)] + ["rank0", "rank1"]
    assert [s["episode_id"] for s, g in zip(specs, groups, strict=True) if g == "rank3"] == [3, 11, 19]
    assert standard.env_group({**specs[0], "task": GROUP}) is None
    assert CalvinEvaluator(protocol="released", released_ranks=4).env_group({**specs[5], "task": GROUP}) == "rank1"


def test_a_reused_env_is_reset_to_each_sequence_in_turn() -> None:
    env, oracle = FakeCalvinEnv(), ScriptedOracle({})
    evaluator = CalvinEvaluator(protocol="released")
    first = _episode(env, oracle, 1)
    evaluator.run_episode(first, ScriptedPolicy(ACTION), SPEC, max_steps=2)
    second = evaluator.reuse_env(first, {"task": GROUP, "episode_id": 9})
    assert second.sim is env and second.oracle is oracle and second.sequence == 9
    assert second.subtasks == load_eval_set().sequences[9].subtasks
    evaluator.run_episode(second, ScriptedPolicy(ACTION), {"task": GROUP, "episode_id": 9}, max_steps=2)
    resets = [c[1] for c in env.calls if c[0] == "reset"]
    assert len(resets) == 2
    np.testing.assert_array_equal(resets[1][1], load_eval_set().sequences[9].scene_obs)
    with pytest.raises(ValueError, match="out of range"):
        evaluator.reuse_env(first, {"task": GROUP, "episode_id": 5000})


def test_calvin_env_commit_is_recorded_and_compared_with_the_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    clone = tmp_path / "calvin_env"
    clone.mkdir()
    git = ["git", "-C", str(clone), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(calvin_env_setup, "calvin_env_clone", lambda: clone)
    version = calvin_env_setup.calvin_env_version()
    assert version == {"calvin_env_commit": head, "calvin_env_matches_benchmark": head.startswith("1431a46")}
    monkeypatch.setattr(calvin_env_setup, "BENCHMARK_COMMIT", head[:7])
    assert calvin_env_setup.calvin_env_version()["calvin_env_matches_benchmark"] is True
    # not a git clone: unknown, not "matches"
    monkeypatch.setattr(calvin_env_setup, "calvin_env_clone", lambda: tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    assert calvin_env_setup.calvin_env_version() == {"calvin_env_commit": None, "calvin_env_matches_benchmark": None}


def test_a_non_benchmark_calvin_env_is_warned_about_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(calvin_env_setup, "calvin_env_installed", lambda: True)
    monkeypatch.setattr(calvin_env_setup, "calvin_env_clone", lambda: tmp_path)
    monkeypatch.setattr(
        calvin_env_setup, "calvin_env_version",
        lambda: {"calvin_env_commit": "797142c0ffee", "calvin_env_matches_benchmark": False},
    )  # fmt: skip
    evaluator = CalvinEvaluator(use_egl=False)
    with caplog.at_level("WARNING"):
        evaluator.check_available()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "797142c" in warnings[0] and "1431a46" in warnings[0] and "calvin_env_matches_benchmark: false" in warnings[0]
    assert evaluator.simulator_versions()["calvin_env_matches_benchmark"] is False

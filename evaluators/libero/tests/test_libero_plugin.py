"""LIBERO-10 plugin logic without the simulator: a fake env with LIBERO's env interface."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import vlm4vla_libero.evaluator as ev
import yaml
from vlm4vla_libero import DUMMY_ACTION, LIBERO10_TASKS, LiberoEpisode, LiberoEvaluator, to_env_action

from vlm4vla.evaluation import EvaluationError
from vlm4vla.evaluation.client import PolicyClient
from vlm4vla.evaluation.testing import EvaluatorContract, ScriptedPolicy
from vlm4vla.imaging import libero_image_to_upright


class FakeLiberoEnv:
    """LIBERO's env interface: reset / set_init_state → obs / step → (obs, reward, done, info)."""

    def __init__(self, done_at: int | None = None, size: int = 8) -> None:
        self.done_at = done_at  # `done` on this (1-based) env step, counting wait steps
        self.size = size
        self.calls: list[tuple[str, Any]] = []
        self.actions: list[np.ndarray] = []
        self.images: list[np.ndarray] = []
        self.closed = False

    def _obs(self) -> dict[str, np.ndarray]:
        n = len(self.actions)
        # No symmetry: the 180°-rotated image differs from the raw and from a single flip.
        image = (np.arange(self.size * self.size * 3).reshape(self.size, self.size, 3) * 7 + n) % 251
        image = image.astype(np.uint8)
        self.images.append(image)
        return {"agentview_image": image, "robot0_eef_pos": np.array([0.1, 0.2, 0.3 + n])}

    def reset(self) -> dict[str, np.ndarray]:
        self.calls.append(("reset", None))
        return self._obs()

    def set_init_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append(("set_init_state", np.array(state)))
        return self._obs()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, dict]:
        assert self.calls and self.calls[-1][0] in ("set_init_state", "step"), "stepped before set_init_state"
        self.calls.append(("step", None))
        self.actions.append(np.array(action, dtype=np.float64))
        done = self.done_at is not None and len(self.actions) >= self.done_at
        return self._obs(), float(done), done, {}

    def close(self) -> None:
        self.closed = True


def _episode(
    env: FakeLiberoEnv, k: int = 3, *, center_crop: float | None = None, image_size: int | None = None
) -> LiberoEpisode:
    """The episode env for init state ``k`` (init state ``j`` is ``np.full(5, j)``); by default the
    policy's image size is the camera's, so the policy image is the upright frame itself."""
    return LiberoEpisode(
        sim=env, task=SPEC["task"], instruction="put both moka pots on the stove",
        init_states=np.stack([np.full(5, float(j)) for j in range(50)]), init_index=k,
        camera_size=env.size, center_crop=center_crop, image_size=image_size or env.size,
    )  # fmt: skip


SPEC = {"task": LIBERO10_TASKS[8], "episode_id": 3, "init_state": 3}


class TestLiberoContract(EvaluatorContract):
    suite = "libero10"
    simulator_modules = ("libero", "robosuite", "mujoco")

    def hide_simulator(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(ev, "_libero_root", lambda: None)

    def fake_env(self, spec: dict[str, Any]) -> LiberoEpisode:
        return _episode(FakeLiberoEnv(), int(spec["init_state"]))


# -------------------------------------------------------------------- episodes / discovery
def test_tasks_and_episodes_follow_the_protocol() -> None:
    evaluator = LiberoEvaluator()
    assert evaluator.name == "libero10" and evaluator.headline_metric == "success_rate"
    assert evaluator.tasks() == list(LIBERO10_TASKS) and len(set(LIBERO10_TASKS)) == 10
    episodes = evaluator.episodes(LIBERO10_TASKS[0])
    assert [e["episode_id"] for e in episodes] == list(range(50))
    assert [e["init_state"] for e in episodes] == list(range(50))
    assert evaluator.episodes(LIBERO10_TASKS[0], episodes_per_task=2) == [
        {"episode_id": 0, "init_state": 0},
        {"episode_id": 1, "init_state": 1},
    ]
    with pytest.raises(ValueError, match="unknown LIBERO-10 task"):
        evaluator.episodes("pick up the moon")


def _pipeline(source: int | None, crop: float | None, dataset: str = "libero") -> dict[str, Any]:
    return {"dataset": dataset, "source_size": [source, source] if source else None, "resize_to": 224,
            "augmentation": crop is not None, "crop_scale": crop}  # fmt: skip


def test_camera_size_and_crop_follow_the_bundle_unless_set() -> None:
    standard, released = LiberoEvaluator(), LiberoEvaluator(protocol="released")
    rlds = {"image_size": 224, "image_pipeline": _pipeline(256, 0.9)}
    hdf5_no_aug = {"image_size": 224, "image_pipeline": _pipeline(128, None)}
    for evaluator in (standard, released):
        assert evaluator.bundle_settings(rlds) == {
            "camera_size": 256, "center_crop": 0.9, "image_size": 224, "pipeline_recorded": True,
        }  # fmt: skip
        inputs = evaluator.bundle_settings(hdf5_no_aug)
        assert (inputs["camera_size"], inputs["center_crop"]) == (128, None)
    # bundles without a recorded pipeline: each protocol's own default
    assert (standard.bundle_settings({})["camera_size"], standard.bundle_settings({})["center_crop"]) == (128, None)
    assert (released.bundle_settings({})["camera_size"], released.bundle_settings({})["center_crop"]) == (256, 0.9)
    # a Bridge-trained pipeline says nothing about LIBERO's camera
    bridge = {"image_size": 224, "image_pipeline": _pipeline(256, 0.9, dataset="bridge")}
    assert standard.bundle_settings(bridge)["camera_size"] == 128
    # explicit options win, and are recorded settings
    forced = LiberoEvaluator(camera_size=224, center_crop=False)
    assert forced.bundle_settings(rlds)["camera_size"] == 224 and forced.bundle_settings(rlds)["center_crop"] is None
    assert LiberoEvaluator(center_crop=True).bundle_settings(hdf5_no_aug)["center_crop"] == 0.9
    assert forced.settings()["camera_size"] == 224 and forced.settings()["center_crop"] is False
    assert LiberoEvaluator(protocol="released").settings()["env_lifetime"] == "task"
    with pytest.raises(ValueError, match="center_crop"):
        LiberoEvaluator(center_crop="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="camera_size"):
        LiberoEvaluator(camera_size=0)


def test_protocol_modes() -> None:
    assert LiberoEvaluator().protocol_modes() == ("full", "half", "single")
    assert LiberoEvaluator(protocol="released").protocol_modes() == ("full", "half")
    with pytest.raises(EvaluationError, match="protocol"):
        LiberoEvaluator(protocol="paper")


def test_centre_crop_of_a_known_pattern_reaches_the_policy() -> None:
    """A 10×10 frame that ramps along x (value 20·column). ``center_crop=0.64``: sides 0.8, box
    (0.1, 0.9); TensorFlow's crop_and_resize samples pixel centres ``0.1·9 + i·0.8·9/3`` = 0.9,
    3.3, 5.7, 8.1, bilinearly. After the 180° rotation column ``c`` holds 20·(9 − c), so the policy
    sees 20·(9 − x) = 162, 114, 66, 18 on every row (hand-computed)."""

    class Ramp(FakeLiberoEnv):
        def _obs(self) -> dict[str, np.ndarray]:
            image = np.repeat((np.arange(10, dtype=np.uint8) * 20)[None, :, None], 10, axis=0).repeat(3, axis=2)
            self.images.append(image)
            return {"agentview_image": image}

    policy = ScriptedPolicy([[0.0] * 7])
    episode = _episode(Ramp(size=10), center_crop=0.64, image_size=4)
    LiberoEvaluator(wait_steps=0).run_episode(episode, policy, SPEC, max_steps=1)
    seen = policy.images[0]
    assert seen.shape == (4, 4, 3)
    for row in seen:
        assert row[:, 0].tolist() == [162, 114, 66, 18], seen[..., 0]
    # Without the crop: the whole frame, bicubic-resized (its ends reach the outer columns' values).
    policy = ScriptedPolicy([[0.0] * 7])
    LiberoEvaluator(wait_steps=0).run_episode(_episode(Ramp(size=10), image_size=4), policy, SPEC, max_steps=1)
    assert policy.images[0][0, 0, 0] > 162 and policy.images[0][0, -1, 0] < 18


# -------------------------------------------------------------------- rollout logic
def test_rollout_waits_then_feeds_the_upright_image_and_instruction() -> None:
    env = FakeLiberoEnv()
    policy = ScriptedPolicy([[0.1, -0.2, 0.3, 0.0, 0.0, 0.05, 1.0]])
    record = LiberoEvaluator().run_episode(_episode(env), policy, SPEC, max_steps=6)

    # reset, then the episode's init state, then 10 dummy steps, then 6 policy steps
    assert [c[0] for c in env.calls[:2]] == ["reset", "set_init_state"]
    np.testing.assert_array_equal(env.calls[1][1], np.full(5, 3.0))
    assert len(env.actions) == 10 + 6
    for action in env.actions[:10]:
        np.testing.assert_array_equal(action, np.array(DUMMY_ACTION))
    np.testing.assert_allclose(env.actions[10], [0.1, -0.2, 0.3, 0.0, 0.0, 0.05, 1.0], rtol=1e-6)

    # orientation: the policy sees obs rotated by 180° (the datamodule's convention), obs of the
    # step just taken; the first policy image is the one after the last wait step
    assert len(policy.images) == 6
    for t, image in enumerate(policy.images):
        raw = env.images[1 + 10 + t]  # reset obs, set_init_state obs = images[1], then one per step
        np.testing.assert_array_equal(image, np.rot90(raw, 2))
        np.testing.assert_array_equal(image, libero_image_to_upright(raw))
        assert not np.array_equal(image, raw) and not np.array_equal(image, raw[::-1])
        assert image.flags.c_contiguous and image.dtype == np.uint8
    assert policy.instructions == ["put both moka pots on the stove"] * 6
    assert record["success"] is False and record["steps"] == 6
    assert record["init_state"] == 3 and record["wait_steps"] == 10 and record["camera_size"] == 8
    assert record["final_eef_pos"] == [0.1, 0.2, 16.3]


def test_wait_steps_with_the_initial_obs_when_there_are_none() -> None:
    env = FakeLiberoEnv()
    policy = ScriptedPolicy([[0, 0, 0, 0, 0, 0, -1]])
    LiberoEvaluator(wait_steps=0).run_episode(_episode(env), policy, SPEC, max_steps=2)
    np.testing.assert_array_equal(policy.images[0], np.rot90(env.images[1], 2))  # the set_init_state obs
    assert len(env.actions) == 2


def test_actions_are_clipped_and_the_gripper_mapped_to_minus_one_plus_one() -> None:
    env = FakeLiberoEnv()
    scripted = [
        [2.0, -3.0, 0.5, 1.5, -1.0001, 0.25, 1.0],  # signed bundle: +1 close
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0],  # signed bundle: -1 open
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # bundle without normaliser: 0 → open
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # … 1 → close
    ]
    LiberoEvaluator().run_episode(_episode(env), ScriptedPolicy(scripted), SPEC, max_steps=4)
    sent = np.stack(env.actions[10:])
    np.testing.assert_allclose(sent[0], [1.0, -1.0, 0.5, 1.0, -1.0, 0.25, 1.0])
    assert sent[:, 6].tolist() == [1.0, -1.0, -1.0, 1.0]
    assert np.all(np.abs(sent[:, :6]) <= 1.0)
    with pytest.raises(EvaluationError, match="7-d"):
        to_env_action(np.zeros(6))
    with pytest.raises(EvaluationError, match="non-finite"):
        to_env_action(np.array([np.nan, 0, 0, 0, 0, 0, 1]))


def test_early_stop_on_success_and_done_during_wait_steps_is_ignored() -> None:
    env = FakeLiberoEnv(done_at=10 + 5)  # the 5th policy step reaches the goal
    policy = ScriptedPolicy([[0.0] * 6 + [1.0]])
    record = LiberoEvaluator().run_episode(_episode(env), policy, SPEC, max_steps=30)
    assert record["success"] is True and record["steps"] == 5
    assert len(env.actions) == 15 and len(policy.images) == 5

    env = FakeLiberoEnv(done_at=3)  # `done` while settling does not end the episode before the policy acts
    record = LiberoEvaluator().run_episode(_episode(env), ScriptedPolicy([[0.0] * 7]), SPEC, max_steps=30)
    assert record["steps"] == 1 and record["success"] is True  # the first policy step still reports done
    assert len(env.actions) == 11


def test_step_limit_is_520_unless_capped() -> None:
    env = FakeLiberoEnv()
    record = LiberoEvaluator().run_episode(_episode(env), ScriptedPolicy([[0.0] * 7]), SPEC)
    assert record["steps"] == 520 and len(env.actions) == 530
    env = FakeLiberoEnv()
    record = LiberoEvaluator(max_steps=7).run_episode(_episode(env), ScriptedPolicy([[0.0] * 7]), SPEC, max_steps=50)
    assert record["steps"] == 7


def test_chunks_are_executed_through_the_policy_client() -> None:
    env = FakeLiberoEnv()
    queries: list[np.ndarray] = []

    def query(image: np.ndarray, text: str) -> np.ndarray:
        queries.append(image)
        chunk = np.zeros((4, 7), dtype=np.float32)
        chunk[:, 0] = np.arange(4) * 0.1 + len(queries)  # arm x = query index + 0.1 * position
        chunk[:, 6] = 1.0
        return chunk

    client = PolicyClient(query, mode="full", chunk_size=4)
    record = LiberoEvaluator().run_episode(_episode(env), client, SPEC, max_steps=10)
    assert record["steps"] == 10 and len(queries) == 3
    xs = [a[0] for a in env.actions[10:]]
    np.testing.assert_allclose(xs, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # clipped to 1
    np.testing.assert_array_equal(queries[1], np.rot90(env.images[1 + 10 + 4], 2))


# -------------------------------------------------------------------- the released protocol
def test_released_loop_alternates_five_dummy_steps_with_the_first_policy_steps() -> None:
    env = FakeLiberoEnv()
    policy = ScriptedPolicy([[0.1] * 6 + [1.0]])
    record = LiberoEvaluator(protocol="released").run_episode(_episode(env), policy, SPEC)
    kinds = ["dummy" if np.array_equal(a, np.array(DUMMY_ACTION)) else "policy" for a in env.actions]
    # t = 0, 2, 4, 6, 8: one dummy step then one policy step; then policy steps while t < 530
    assert kinds[:10] == ["dummy", "policy"] * 5
    assert kinds[10:] == ["policy"] * 520
    assert record["steps"] == 525 and record["wait_steps"] == 5 and len(env.actions) == 530
    # the first query sees the frame after one dummy step (images: reset, set_init_state, step 1, …)
    np.testing.assert_array_equal(policy.images[0], np.rot90(env.images[2], 2))
    np.testing.assert_array_equal(policy.images[1], np.rot90(env.images[4], 2))


def test_released_loop_stops_on_done_after_a_policy_step_only() -> None:
    env = FakeLiberoEnv(done_at=1)  # `done` from the very first (dummy) step: ignored there
    record = LiberoEvaluator(protocol="released").run_episode(_episode(env), ScriptedPolicy([[0.0] * 7]), SPEC)
    assert record["success"] is True and record["steps"] == 1 and len(env.actions) == 2
    env = FakeLiberoEnv(done_at=6)  # env steps D P D P D P: the 6th is the 3rd policy step
    record = LiberoEvaluator(protocol="released").run_episode(_episode(env), ScriptedPolicy([[0.0] * 7]), SPEC)
    assert record["success"] is True and record["steps"] == 3 and record["wait_steps"] == 3
    env = FakeLiberoEnv(done_at=7)  # the 7th is a dummy step: the episode ends after the next policy step
    record = LiberoEvaluator(protocol="released").run_episode(_episode(env), ScriptedPolicy([[0.0] * 7]), SPEC)
    assert record["success"] is True and record["steps"] == 4 and record["wait_steps"] == 4


def test_released_protocol_reuses_one_env_per_task_seeded_with_the_base_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the harness: one env per task (built once, seeded once with 0), its episodes in order."""
    from vlm4vla.evaluation.sweep import Checkpoint, SweepSettings, run_sweep

    built: list[dict[str, Any]] = []
    evaluator = LiberoEvaluator(protocol="released")
    monkeypatch.setattr(evaluator, "check_available", lambda: None)

    def make_env(spec: dict[str, Any], *, seed: int) -> LiberoEpisode:
        env = FakeLiberoEnv(done_at=4)
        built.append({"task": spec["task"], "seed": seed, "init": spec["init_state"], "env": env})
        episode = _episode(env, int(spec["init_state"]))
        return dataclasses.replace(episode, task=spec["task"])

    monkeypatch.setattr(evaluator, "make_env", make_env)
    config = {"chunk_size": 4, "normalizer": {"kind": "stub"}, "image_size": 8}
    ckpt = Checkpoint("bundle", Path("bundle"), None, config)
    tasks = list(LIBERO10_TASKS[:2])

    def predict(images: Any, texts: Any) -> np.ndarray:
        return np.zeros((len(images), 4, 7), dtype=np.float32)

    settings = SweepSettings(modes=["full"], tasks=tasks, episodes_per_task=3)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        monkeypatch.setattr(
            evaluator, "bundle_settings", lambda config: {"camera_size": 8, "center_crop": None, "image_size": 8}
        )
        result = run_sweep(evaluator, [ckpt], out, settings, policy_loader=lambda c: predict)
        records = [
            json.loads(line) for line in (Path(out) / "bundle" / "full" / "episodes.jsonl").read_text().splitlines()
        ]
    assert [(b["task"], b["seed"], b["init"]) for b in built] == [(tasks[0], 0, 0), (tasks[1], 0, 0)]
    # each env ran its task's three initial states in order: reset + set_init_state per episode
    for b in built:
        inits = [c[1][0] for c in b["env"].calls if c[0] == "set_init_state"]
        assert inits == [0.0, 1.0, 2.0]
    assert [(r["task"], r["episode_id"], r["seed"], r["protocol"]) for r in records] == [
        (t, k, 0, "released") for t in tasks for k in range(3)
    ]
    assert result.ran == 6


# -------------------------------------------------------------------- first-import config prompt
def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "site" / "libero" / "libero"
    (root / "bddl_files").mkdir(parents=True)
    (root / "init_files").mkdir()
    (root / "assets" / "scenes").mkdir(parents=True)
    return root


def test_ensure_config_writes_defaults_once_and_respects_existing_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _fake_root(tmp_path)
    monkeypatch.setattr(ev, "_libero_root", lambda: root)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ev.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))

    environ: dict[str, str] = {}
    file = ev.ensure_libero_config(environ)
    assert file is not None and file.parent == Path(environ["LIBERO_CONFIG_PATH"])
    assert str(file).startswith(str(tmp_path / "tmp"))
    config = yaml.safe_load(file.read_text())
    assert set(config) == set(ev.CONFIG_KEYS)
    assert config["bddl_files"] == str(root / "bddl_files") and config["assets"] == str(root / "assets")
    assert ev.ensure_libero_config(environ) == file  # idempotent (workers call it again)

    # an explicit $LIBERO_CONFIG_PATH: its config is kept as is, or written there if missing
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    (chosen / "config.yaml").write_text("bddl_files: /somewhere\n")
    assert ev.ensure_libero_config({"LIBERO_CONFIG_PATH": str(chosen)}) == chosen / "config.yaml"
    assert (chosen / "config.yaml").read_text() == "bddl_files: /somewhere\n"
    empty = tmp_path / "empty"
    assert ev.ensure_libero_config({"LIBERO_CONFIG_PATH": str(empty)}) == empty / "config.yaml"

    # a user config in LIBERO's default place (~/.libero) wins and the variable stays unset
    home_cfg = tmp_path / "home" / ".libero" / "config.yaml"
    home_cfg.parent.mkdir(parents=True)
    home_cfg.write_text("assets: /mine\n")
    environ = {}
    assert ev.ensure_libero_config(environ) == home_cfg and "LIBERO_CONFIG_PATH" not in environ


_PROMPTING_LIBERO = """
import os
import yaml
_dir = os.environ.get("LIBERO_CONFIG_PATH", os.path.expanduser("~/.libero"))
_file = os.path.join(_dir, "config.yaml")
if not os.path.exists(_file):  # what the original LIBERO does at first import
    answer = input("Do you want to specify a custom path for the dataset folder? (Y/N): ")
    {on_answer}
def get_libero_path(key):
    with open(_file) as f:
        return yaml.safe_load(f)[key]
"""


def _fake_libero(tmp_path: Path, on_answer: str) -> Path:
    site = tmp_path / "site"
    root = _fake_root(tmp_path)
    (site / "libero" / "__init__.py").write_text("")
    (root / "__init__.py").write_text(textwrap.dedent(_PROMPTING_LIBERO).replace("{on_answer}", on_answer))
    (root / "benchmark").mkdir()
    (root / "benchmark" / "__init__.py").write_text("def get_benchmark_dict():\n    return {}\n")
    (root / "envs").mkdir()
    (root / "envs" / "__init__.py").write_text("class OffScreenRenderEnv:\n    pass\n")
    return site


def test_importing_a_prompting_libero_never_blocks(tmp_path: Path) -> None:
    """A LIBERO that prompts on stdin at first import: with the config written it does not
    prompt; if it still did, `import_libero` fails fast instead of waiting on stdin."""
    site = _fake_libero(tmp_path, on_answer="raise SystemExit('a prompt was answered')")
    code = textwrap.dedent(
        """
        import os, sys
        from vlm4vla_libero.evaluator import import_libero
        from vlm4vla.evaluation import SimulatorImportError
        if sys.argv[1] == "remove-config":
            os.environ["LIBERO_CONFIG_PATH"] = os.path.join(os.environ["HOME"], "nowhere")
            import vlm4vla_libero.evaluator as ev
            ev.ensure_libero_config = lambda environ=None: None  # simulate a config that cannot be written
        try:
            benchmark, get_libero_path, env_cls = import_libero()
        except SimulatorImportError as err:
            print(); print("ERROR", err)
        else:
            print(); print("OK", get_libero_path("bddl_files"), os.environ["MUJOCO_GL"])
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LIBERO_CONFIG_PATH", "MUJOCO_GL")}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=str(site))
    (tmp_path / "tmp").mkdir()
    for mode, expected in (("default", "OK"), ("remove-config", "ERROR")):
        # stdin is an open pipe nobody writes to: a real prompt would block until the timeout
        proc = subprocess.Popen(
            [sys.executable, "-c", code, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        result = out.strip().splitlines()[-1].split()
        assert result[0] == expected, out + err
        if expected == "OK":
            assert "(Y/N)" not in out  # no prompt at all
            assert result[1:] == [str(site / "libero" / "libero" / "bddl_files"), "egl"]
        else:
            assert "stdin" in out and "config.yaml" in out

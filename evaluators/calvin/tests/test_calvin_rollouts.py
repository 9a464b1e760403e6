"""Real calvin_env rollouts (scene D, static 200² + gripper 84² cameras, the benchmark's oracle).

Skipped when calvin_env is not importable; install it from source (evaluators/calvin/README.md).
A deterministic scripted policy (no model) drives 2 sequences × ≤ 15 steps per subtask through the
harness, once in-process and once with 2 worker processes → identical records. About 10–30 s on
2 CPU cores (TinyRenderer ≈ 70 ms per step for both cameras). One more test presses the LED button
directly (no policy) and checks ``turn_off_led`` against the installed calvin_env commit.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from vlm4vla_calvin import BENCHMARK_COMMIT, GROUP, CalvinEvaluator, load_eval_set
from vlm4vla_calvin.env import calvin_env_version

from vlm4vla.evaluation.testing import ScriptedPolicy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("calvin_env") is None,
        reason="calvin_env is not installed (git clone https://github.com/mees/calvin_env; "
        "git -C calvin_env checkout 1431a46; pip install -e calvin_env; see evaluators/calvin/README.md)",
    ),
]

TIMING_FIELDS = {"seconds"}


def scripted_predict(images: Sequence[np.ndarray], instructions: Sequence[str]) -> np.ndarray:
    """Chunks of 4 relative actions depending only on the image: deterministic, gripper opening."""
    out = np.zeros((len(images), 4, 7), np.float32)
    for b, image in enumerate(images):
        phase = float(np.asarray(image, dtype=np.float64).mean()) / 255.0
        out[b, :, 0] = 0.5 * np.sin(np.arange(4) + 10 * phase)
        out[b, :, 2] = -0.3
        out[b, :, 6] = 1.0
    return out


def test_real_env_obs_oracle_and_bit_identical_repeats() -> None:
    evaluator = CalvinEvaluator()
    evaluator.check_available()
    spec = {"task": GROUP, "episode_id": 0, "subtasks": list(load_eval_set().sequences[0].subtasks)}
    records = []
    for _ in range(2):
        episode = evaluator.make_env(spec, seed=0)
        try:
            obs = episode.sim.reset(robot_obs=episode.robot_obs, scene_obs=episode.scene_obs)
            assert obs["rgb_obs"]["rgb_static"].shape == (200, 200, 3)
            assert obs["rgb_obs"]["rgb_gripper"].shape == (84, 84, 3)
            np.testing.assert_allclose(obs["scene_obs"][:6], episode.scene_obs[:6], atol=1e-3)
            info = episode.sim.get_info()
            assert episode.oracle.get_task_info_for_set(info, info, {"open_drawer", "turn_off_lightbulb"}) == set()
            # the oracle on real infos: drawer closed (0.0) → open (0.22) is "open_drawer", nothing else
            closed = episode.scene_obs.copy()
            closed[1] = 0.0
            episode.sim.reset(robot_obs=episode.robot_obs, scene_obs=closed)
            start = episode.sim.get_info()
            episode.sim.reset(robot_obs=episode.robot_obs, scene_obs=episode.scene_obs)
            end = episode.sim.get_info()
            checked = {"open_drawer", "close_drawer", "move_slider_left", "turn_off_lightbulb"}
            assert episode.oracle.get_task_info_for_set(start, end, checked) == {"open_drawer"}
            assert episode.oracle.get_task_info_for_set(end, start, checked) == {"close_drawer"}
            client = ScriptedPolicy(lambda image, instruction: scripted_predict([image], [instruction])[0, 0])
            records.append(evaluator.run_episode(episode, client, spec, max_steps=12))
            assert client.resets == len(records[-1]["subtasks"])
            # the policy sees rgb_static (200²) resized to the bundle's image size, as in training
            size = episode.image_size
            assert all(i.shape == (size, size, 3) and i.dtype == np.uint8 for i in client.images)
        finally:
            evaluator.close_env(episode)
    assert records[0] == records[1]
    assert records[0]["image_size"] == [200, 200] and records[0]["subtasks"][0]["task"] == "rotate_blue_block_right"


def _records(out: Path) -> list[dict[str, Any]]:
    files = sorted(out.glob("*/*/episodes.jsonl"))
    assert len(files) == 1, files
    records = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
    return sorted(
        ({k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records), key=lambda r: r["episode_id"]
    )


def test_harness_rollouts_do_not_depend_on_the_worker_count(tmp_path: Path) -> None:
    from vlm4vla.evaluation.sweep import Checkpoint, SweepSettings, run_sweep

    evaluator = CalvinEvaluator()
    ckpt = Checkpoint("scripted", tmp_path / "bundle", None, {"chunk_size": 4, "action_dim": 7})
    results = []
    for workers in (1, 2):
        # the scripted actions are in the env's units: a bundle without action statistics is fine here
        settings = SweepSettings(
            modes=["full"], episodes_per_task=2, max_steps=15, workers=workers, allow_unnormalized=True
        )
        run_sweep(evaluator, [ckpt], tmp_path / f"w{workers}", settings, policy_loader=lambda c: scripted_predict)
        results.append(_records(tmp_path / f"w{workers}"))
    assert [r["episode_id"] for r in results[0]] == [0, 1]
    assert results[0] == results[1]


HOLD = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
"""A relative action that keeps the arm still with the gripper open."""


def _press_led_button(sim: Any, steps: int = 3) -> dict[str, Any]:
    """Press the LED button once: its prismatic joint pushed fully in (upper limit, past
    ``trigger_threshold``), then ``steps`` env steps holding the arm — the first one registers the
    press (``Button.step`` runs after the physics substeps, the joint still past the threshold), the
    button's motor pushes it back out during the next ones, so a following press is a new press.
    Returns the last step's info."""
    (button,) = [b for b in sim.scene.buttons if b.effect == "led"]
    assert button.initial_state <= button.trigger_threshold  # pressed = joint above the threshold
    sim.p.resetJointState(button.uid, button.joint_index, button.ul, physicsClientId=sim.cid)
    for _ in range(steps):
        _obs, _reward, _done, info = sim.step(HOLD)
    assert button.get_state() < button.trigger_threshold, "the button did not come back out"
    return info


def _led(info: dict[str, Any]) -> int:
    return info["scene_info"]["lights"]["led"]["logical_state"]


def _button(info: dict[str, Any]) -> int:
    return info["scene_info"]["buttons"]["base__button"]["logical_state"]


def test_led_button_presses_for_turn_off_led_follow_the_recorded_calvin_env_commit() -> None:
    """At the benchmark's commit (1431a46) ``Button.reset`` turns the button's logical state OFF even
    when ``scene_obs`` has the LED on, so the first press "turns the LED on" (it stays on) and only
    the second turns it off; from 797142c on, the button takes the LED's state and one press does."""
    evaluator = CalvinEvaluator()
    evaluator.check_available()
    versions = evaluator.simulator_versions()
    assert {k: versions[k] for k in ("calvin_env_commit", "calvin_env_matches_benchmark")} == calvin_env_version()
    commit = versions["calvin_env_commit"]
    assert isinstance(commit, str) and re.fullmatch("[0-9a-f]{40}", commit), versions
    benchmark = versions["calvin_env_matches_benchmark"]
    assert benchmark is commit.startswith(BENCHMARK_COMMIT)
    # what the oracle reports for turn_off_led after one and after two presses
    expected = [set(), {"turn_off_led"}] if benchmark else [{"turn_off_led"}, set()]

    sequence = next(s for s in load_eval_set().sequences if s.subtasks[0] == "turn_off_led")
    spec = {"task": GROUP, "episode_id": sequence.index, "subtasks": list(sequence.subtasks)}
    episode = evaluator.make_env(spec, seed=0)
    try:
        sim, oracle = episode.sim, episode.oracle
        sim.reset(robot_obs=episode.robot_obs.copy(), scene_obs=episode.scene_obs.copy())
        start_info = sim.get_info()
        assert _led(start_info) == 1
        assert _button(start_info) == (0 if benchmark else 1)

        one = _press_led_button(sim)
        assert _button(one) == 1 - _button(start_info)  # the press registered
        assert _led(one) == (1 if benchmark else 0)
        assert oracle.get_task_info_for_set(start_info, one, {"turn_off_led"}) == expected[0]
        assert oracle.get_task_info_for_set(start_info, sim.get_info(), {"turn_off_led"}) == expected[0]

        two = _press_led_button(sim)
        assert _button(two) == _button(start_info)
        assert _led(two) == (0 if benchmark else 1)  # after 797142c the second press turns the LED back on
        assert oracle.get_task_info_for_set(start_info, two, {"turn_off_led"}) == expected[1]
        assert oracle.get_task_info_for_set(start_info, two, {"turn_on_led"}) == set()
    finally:
        evaluator.close_env(episode)

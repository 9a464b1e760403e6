"""The shipped CALVIN evaluation set and the metric arithmetic (no calvin_env needed)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from vlm4vla_calvin import (
    GROUP,
    CalvinEvaluator,
    average_length,
    chain_success_rates,
    load_eval_set,
    per_subtask,
)
from vlm4vla_calvin.sequences import parse_eval_set

ROBOT_OBS = [
    0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
    -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0,
]  # fmt: skip


def test_the_set_has_1000_sequences_of_5_distinct_subtasks_with_known_first_entries() -> None:
    eval_set = load_eval_set()
    assert len(eval_set.sequences) == 1000
    assert [s.index for s in eval_set.sequences] == list(range(1000))
    assert all(len(s.subtasks) == 5 and len(set(s.subtasks)) == 5 for s in eval_set.sequences)
    assert all(len(s.scene_obs) == 24 for s in eval_set.sequences)
    assert list(eval_set.robot_obs) == pytest.approx(ROBOT_OBS)
    first, second = eval_set.sequences[:2]
    assert first.subtasks == (
        "rotate_blue_block_right", "move_slider_right", "lift_red_block_slider", "place_in_slider", "turn_off_lightbulb",
    )  # fmt: skip
    assert dict(first.initial_state) == {
        "led": 1, "lightbulb": 1, "slider": "left", "drawer": "open", "red_block": "slider_left",
        "blue_block": "table", "pink_block": "slider_right", "grasped": 0,
    }  # fmt: skip
    # physical state of the symbolic one: slider left (0.28), drawer open (0.22), switch 0.088 + bulb on, LED on
    assert first.scene_obs[:6] == pytest.approx((0.28, 0.22, 0.0, 0.088, 1.0, 1.0))
    assert second.subtasks == (
        "turn_off_led",
        "push_into_drawer",
        "lift_blue_block_drawer",
        "place_in_slider",
        "close_drawer",
    )
    assert second.scene_obs[0] == 0.0  # slider right
    # 34 subtasks, each with its one validation instruction
    names = {t for s in eval_set.sequences for t in s.subtasks}
    assert len(names) == 34 and set(eval_set.instructions) == names
    assert eval_set.instruction("rotate_red_block_right") == "take the red block and rotate it to the right"
    assert eval_set.instruction("push_red_block_left") == "go push the red block left"
    # the initial states are the benchmark's 192 symbolic states (grasping nothing)
    states = Counter(json.dumps(dict(s.initial_state), sort_keys=True) for s in eval_set.sequences)
    assert len(states) <= 192 and all(json.loads(k)["grasped"] == 0 for k in states)


def test_parse_rejects_inconsistent_data() -> None:
    base = {
        "robot_obs": ROBOT_OBS,
        "instructions": {t: t for t in "abcde"},
        "sequences": [{"initial_state": {}, "tasks": list("abcde"), "scene_obs": [0.0] * 24}],
    }
    assert parse_eval_set(base).sequences[0].subtasks == tuple("abcde")
    with pytest.raises(ValueError, match="5 distinct subtasks"):
        parse_eval_set({**base, "sequences": [{**base["sequences"][0], "tasks": list("abcda")}]})
    with pytest.raises(ValueError, match="scene_obs has 23"):
        parse_eval_set({**base, "sequences": [{**base["sequences"][0], "scene_obs": [0.0] * 23}]})
    with pytest.raises(ValueError, match="no instruction"):
        parse_eval_set({**base, "instructions": {t: t for t in "abcd"}})
    with pytest.raises(ValueError, match="robot_obs"):
        parse_eval_set({**base, "robot_obs": ROBOT_OBS[:14]})


def test_episodes_are_the_first_k_sequences_in_one_group() -> None:
    evaluator = CalvinEvaluator()
    assert evaluator.name == "calvin" and evaluator.headline_metric == "avg_len" and evaluator.tasks() == [GROUP]
    episodes = evaluator.episodes(GROUP)
    assert len(episodes) == 1000 and [e["episode_id"] for e in episodes] == list(range(1000))
    first3 = evaluator.episodes(GROUP, episodes_per_task=3)
    assert first3 == episodes[:3]
    assert first3[1] == {
        "episode_id": 1,
        "subtasks": ["turn_off_led", "push_into_drawer", "lift_blue_block_drawer", "place_in_slider", "close_drawer"],
    }
    assert len(evaluator.episodes(GROUP, episodes_per_task=5000)) == 1000
    json.dumps(episodes)  # JSON-able specs
    with pytest.raises(ValueError, match="unknown CALVIN task group"):
        evaluator.episodes("D")


def _record(subtasks: list[tuple[str, bool, int]]) -> dict:
    subs = [{"task": t, "success": ok, "steps": n} for t, ok, n in subtasks]
    completed = sum(s["success"] for s in subs)
    return {"task": GROUP, "success": completed == 5, "steps": sum(n for _, _, n in subtasks), "completed": completed,
            "subtasks": subs}  # fmt: skip


def test_metric_arithmetic_on_synthetic_records() -> None:
    records = [
        _record([("a", True, 10), ("b", True, 20), ("c", True, 5), ("d", True, 7), ("e", True, 9)]),  # 5
        _record([("a", True, 12), ("c", False, 360)]),  # 1
        _record([("b", False, 360)]),  # 0
        _record([("a", True, 3), ("b", True, 4), ("d", False, 360)]),  # 2
    ]
    assert average_length(records) == pytest.approx(8 / 4)
    assert chain_success_rates(records) == pytest.approx([3 / 4, 2 / 4, 1 / 4, 1 / 4, 1 / 4])
    assert per_subtask(records) == {
        "a": {"attempts": 3, "successes": 3, "success_rate": 1.0},
        "b": {"attempts": 3, "successes": 2, "success_rate": 2 / 3},
        "c": {"attempts": 2, "successes": 1, "success_rate": 0.5},
        "d": {"attempts": 2, "successes": 1, "success_rate": 0.5},
        "e": {"attempts": 1, "successes": 1, "success_rate": 1.0},
    }
    evaluator = CalvinEvaluator()
    assert evaluator.metric(records) == pytest.approx(2.0)
    summary = evaluator.summarize(records)
    assert summary["avg_len"] == pytest.approx(2.0) and summary["episodes"] == 4
    assert [summary[f"chain_{i}"] for i in range(1, 6)] == pytest.approx([0.75, 0.5, 0.25, 0.25, 0.25])
    assert summary["per_task"] == {GROUP: {"episodes": 4, "avg_len": pytest.approx(2.0)}}
    assert summary["per_subtask"]["b"]["attempts"] == 3
    assert math.isnan(evaluator.metric([])) and all(math.isnan(v) for v in chain_success_rates([]))

"""`vlm4vla.evaluation.testing`: the contract passes a well-behaved plugin and fails broken ones."""

from __future__ import annotations

import random
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.evaluation.doubles import ReachEnv, ReachEvaluator, SimulatedReachEvaluator
from vlm4vla.evaluation import register_evaluator, unregister_evaluator
from vlm4vla.evaluation.testing import EvaluatorContract, ScriptedPolicy, offline_hub, write_tiny_bundle

REPO = Path(__file__).resolve().parents[2]


class TestReachSimContract(EvaluatorContract):
    suite = "reach-sim"
    simulator_modules = ("wave",)
    plugin_module = "tests.evaluation.doubles"  # registers the suite in-process (no entry point)
    import_path = (str(REPO),)

    def hide_simulator(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(SimulatedReachEvaluator, "SIMULATOR", "fakesim_not_installed")

    def fake_env(self, spec: Mapping[str, Any]) -> ReachEnv:
        return ReachEnv(start=1.5, seed=0)  # far from both goals: never succeeds within the contract's steps


class _FlakyReachEvaluator(ReachEvaluator):
    name = "reach-flaky"

    def episodes(self, task: str, *, episodes_per_task: int | None = None) -> list[dict[str, Any]]:
        return [{"episode_id": k, "start": random.random()} for k in range(3)][:episodes_per_task]


def test_the_contract_fails_episodes_that_change_between_calls() -> None:
    class Check(EvaluatorContract):
        suite = "reach-flaky"

    register_evaluator(_FlakyReachEvaluator)
    try:
        with pytest.raises(AssertionError):
            Check().test_episodes_are_deterministic_json_specs_with_unique_ids()
    finally:
        unregister_evaluator("reach-flaky")


def test_the_contract_fails_a_plugin_that_imports_the_data_layer(tmp_path: Path) -> None:
    # What vlm4vla_libero did before: the data layer for a one-line rotation.
    (tmp_path / "heavy_plugin.py").write_text(
        textwrap.dedent(
            """
            from vlm4vla.data.transforms import sample_rng  # noqa: F401
            from tests.evaluation.doubles import ReachEvaluator
            from vlm4vla.evaluation import register_evaluator

            class HeavyReach(ReachEvaluator):
                name = "reach-heavy"

            register_evaluator(HeavyReach)
            """
        )
    )

    class Check(EvaluatorContract):
        suite = "reach-heavy"
        plugin_module = "heavy_plugin"
        import_path = (str(tmp_path), str(REPO))

    with pytest.raises(AssertionError, match="vlm4vla.data"):
        Check().test_importing_the_plugin_loads_no_simulator_and_no_training_code()


def test_scripted_policy_cycles_and_records() -> None:
    policy = ScriptedPolicy([[0.1] * 7, [0.2] * 7])
    image = np.zeros((4, 4, 3), np.uint8)
    got = [float(policy.act(image, "go")[0]) for _ in range(3)]
    policy.reset()
    assert got == pytest.approx([0.1, 0.2, 0.1]) and policy.instructions == ["go"] * 3
    assert policy.events == ["act", "act", "act", "reset"] and policy.resets == 1
    image[0, 0, 0] = 9  # recorded images are copies
    assert policy.images[0][0, 0, 0] == 0

    by_image = ScriptedPolicy(lambda image, text: np.full(7, image.mean()))
    assert by_image.act(np.full((2, 2, 3), 3, np.uint8), "x").dtype == np.float32
    with pytest.raises(ValueError, match="at least one action"):
        ScriptedPolicy([])


def test_tiny_bundles_carry_the_requested_gripper_convention(tmp_path: Path) -> None:
    from vlm4vla.policy.bundle import check_bundle_files

    for kind in ("signed", "unit"):
        config = check_bundle_files(write_tiny_bundle(tmp_path / kind, gripper=kind, chunk_size=2))
        assert config["normalizer"]["gripper"]["kind"] == kind and config["chunk_size"] == 2
    assert check_bundle_files(write_tiny_bundle(tmp_path / "none")).get("normalizer") is None


def test_offline_hub_keeps_what_is_set() -> None:
    environ = {"HF_HUB_OFFLINE": "0"}
    offline_hub(environ)
    assert environ == {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

"""SimplerEnv-Bridge plugin logic without a simulator: test doubles with both backends' gymnasium interface."""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import vlm4vla_simpler.evaluator as ev
from PIL import Image
from scipy.spatial.transform import Rotation
from vlm4vla_simpler import (
    BRIDGE_TASKS,
    MANISKILL3_ENV_IDS,
    MAX_STEPS,
    SimplerBridgeEvaluator,
    SimplerEpisode,
    euler_to_axis_angle,
    gripper_to_env,
    to_env_action,
    to_policy_image,
)

from vlm4vla.evaluation import EvaluationError, SimulatorImportError
from vlm4vla.evaluation.client import PolicyClient
from vlm4vla.evaluation.testing import EvaluatorContract, ScriptedPolicy
from vlm4vla.policy.action_space import GripperConvention, QuantileNormalizer

torch.set_num_threads(1)


# -------------------------------------------------------------------- test doubles
class FakeBridgeEnv(gym.Env):
    """A WidowX Bridge env with gymnasium's interface, in either backend's flavour.

    ``success_at``: the (1-based) steps after which ``info["success"]`` is true.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, backend: str = "simpler_env", success_at: set[int] | None = None) -> None:
        self.backend = backend
        self.success_at = success_at or set()
        self.observation_space = gym.spaces.Dict({})
        shape = (1, 7) if backend == "maniskill3" else (7,)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)
        self.robot_uid = "widowx"
        self.reset_calls: list[dict[str, Any]] = []
        self.actions: list[np.ndarray] = []
        self.frames: list[np.ndarray] = []
        self.closed = False

    def _frame(self) -> np.ndarray:
        n = len(self.actions)
        frame = ((np.arange(480 * 640 * 3).reshape(480, 640, 3) // 7 + 13 * n) % 256).astype(np.uint8)
        self.frames.append(frame)
        return frame

    def _obs(self) -> dict[str, Any]:
        frame = self._frame()
        if self.backend == "maniskill3":  # batched torch tensors, num_envs = 1
            return {"sensor_data": {"3rd_view_camera": {"rgb": torch.from_numpy(frame)[None]}}}
        return {"image": {"3rd_view_camera": {"rgb": frame, "depth": np.zeros((480, 640, 1))}}}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self.reset_calls.append({"seed": seed, "options": options})
        self.actions.clear()
        return self._obs(), {}

    def step(self, action: Any):  # type: ignore[override]
        assert self.reset_calls, "stepped before reset"
        self.actions.append(np.array(action))
        success = len(self.actions) in self.success_at
        info: dict[str, Any]
        if self.backend == "maniskill3":
            info = {"success": torch.tensor([success])}
        else:
            info = {"success": success, "episode_stats": {}}
        return self._obs(), 0.0, success, False, info

    def get_language_instruction(self) -> Any:
        return ["put carrot on plate"] if self.backend == "maniskill3" else "put carrot on plate"

    def close(self) -> None:
        self.closed = True


def _episode(sim: FakeBridgeEnv, task: str = "widowx_carrot_on_plate", k: int = 5) -> SimplerEpisode:
    return SimplerEpisode(sim=sim, backend=sim.backend, task=task, episode_id=k, seed=1234)


def _spec(task: str = "widowx_carrot_on_plate", k: int = 5) -> dict[str, Any]:
    return {"task": task, "episode_id": k, "max_steps": MAX_STEPS[task]}


OPEN = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


class TestSimplerContract(EvaluatorContract):
    suite = "simpler_bridge"
    simulator_modules = ("simpler_env", "mani_skill", "mani_skill2_real2sim", "sapien")

    def hide_simulator(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(ev, "_installed", lambda module: False)

    def fake_env(self, spec: dict[str, Any]) -> SimplerEpisode:
        return _episode(FakeBridgeEnv(), spec["task"], int(spec["episode_id"]))


# -------------------------------------------------------------------- episodes / discovery
def test_four_tasks_times_24_episodes_with_the_protocol_lengths() -> None:
    evaluator = SimplerBridgeEvaluator()
    assert evaluator.name == "simpler_bridge" and evaluator.headline_metric == "success_rate"
    assert evaluator.tasks() == [
        "widowx_carrot_on_plate", "widowx_put_eggplant_in_basket", "widowx_spoon_on_towel", "widowx_stack_cube",
    ]  # fmt: skip
    specs = [(t, e) for t in evaluator.tasks() for e in evaluator.episodes(t)]
    assert len(specs) == 4 * 24
    for task in BRIDGE_TASKS:
        episodes = evaluator.episodes(task)
        assert [e["episode_id"] for e in episodes] == list(range(24))
        assert {e["max_steps"] for e in episodes} == {120 if "eggplant" in task else 60}
    assert MANISKILL3_ENV_IDS["widowx_put_eggplant_in_basket"] == "PutEggplantInBasketScene-v1"
    assert set(MANISKILL3_ENV_IDS) == set(BRIDGE_TASKS)
    assert [e["episode_id"] for e in evaluator.episodes(BRIDGE_TASKS[0], episodes_per_task=3)] == [0, 1, 2]
    assert len(evaluator.episodes(BRIDGE_TASKS[0], episodes_per_task=100)) == 24
    with pytest.raises(ValueError, match="unknown SimplerEnv-Bridge task"):
        evaluator.episodes("widowx_open_drawer")


# -------------------------------------------------------------------- action conversion
def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _rodrigues(rotvec: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(rotvec))
    if angle == 0.0:
        return np.eye(3)
    k = rotvec / angle
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def test_euler_to_axis_angle_hand_computed_values() -> None:
    np.testing.assert_array_equal(euler_to_axis_angle(0.0, 0.0, 0.0), np.zeros(3))  # identity → zero vector
    np.testing.assert_allclose(euler_to_axis_angle(0.1, 0.0, 0.0), [0.1, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(euler_to_axis_angle(0.0, -0.2, 0.0), [0.0, -0.2, 0.0], atol=1e-12)
    np.testing.assert_allclose(euler_to_axis_angle(0.0, 0.0, math.pi / 2), [0.0, 0.0, math.pi / 2], atol=1e-12)
    # roll = pitch = 90°: q = qy(90°)·qx(90°) = (½, ½, ½, −½) → 120° about (1, 1, −1)/√3
    expected = 2 * math.pi / 3 / math.sqrt(3) * np.array([1.0, 1.0, -1.0])
    np.testing.assert_allclose(euler_to_axis_angle(math.pi / 2, math.pi / 2, 0.0), expected, atol=1e-12)
    # static xyz: roll is applied first, about the fixed x axis → R = Rz(yaw) Ry(pitch) Rx(roll), not Rx Ry Rz
    assert not np.allclose(euler_to_axis_angle(0.0, math.pi / 2, math.pi / 2), expected)


def test_euler_to_axis_angle_round_trip_through_rotation_matrices() -> None:
    rng = np.random.default_rng(0)
    for roll, pitch, yaw in rng.uniform(-1.2, 1.2, size=(200, 3)):
        rotvec = euler_to_axis_angle(roll, pitch, yaw)
        assert np.linalg.norm(rotvec) <= math.pi + 1e-12
        np.testing.assert_allclose(_rodrigues(rotvec), _rot_z(yaw) @ _rot_y(pitch) @ _rot_x(roll), atol=1e-12)
        # and back: the matrix's static-xyz Euler angles are the input
        matrix = _rodrigues(rotvec)
        back = (
            math.atan2(matrix[2, 1], matrix[2, 2]),
            math.asin(-matrix[2, 0]),
            math.atan2(matrix[1, 0], matrix[0, 0]),
        )
        np.testing.assert_allclose(back, (roll, pitch, yaw), atol=1e-10)


def test_euler_to_axis_angle_matches_scipy_extrinsic_xyz() -> None:
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    rng = np.random.default_rng(1)
    for angles in rng.uniform(-1.5, 1.5, size=(100, 3)):
        np.testing.assert_allclose(
            euler_to_axis_angle(*angles), rotation.from_euler("xyz", angles).as_rotvec(), atol=1e-10
        )


def test_maniskill3_gets_intrinsic_xyz_euler_angles_of_the_same_rotation() -> None:
    """ManiSkill3 3.0.1 composes the action's rotation as euler_angles_to_matrix(rot, "XYZ") =
    Rx·Ry·Rz (intrinsic); ManiSkill2_real2sim as from_rotvec(rot). Both must apply Bridge's
    static-xyz roll/pitch/yaw rotation; scipy is the oracle for both conventions."""
    rng = np.random.default_rng(0)
    for rpy in rng.uniform(-0.6, 0.6, size=(200, 3)):
        action = np.array([0.01, -0.02, 0.03, *rpy, 1.0])
        target = Rotation.from_euler("xyz", rpy).as_matrix()  # Bridge: Rz(yaw) Ry(pitch) Rx(roll)
        ms3 = to_env_action(action, "maniskill3")
        ms2 = to_env_action(action, "simpler_env")
        np.testing.assert_allclose(Rotation.from_euler("XYZ", ms3[3:6]).as_matrix(), target, atol=1e-12)
        np.testing.assert_allclose(Rotation.from_rotvec(ms2[3:6]).as_matrix(), target, atol=1e-12)
        np.testing.assert_array_equal(ms3[[0, 1, 2, 6]], ms2[[0, 1, 2, 6]])
    # the helper's example, by hand: rpy (0.1, −0.2, 0.3) → XYZ (0.1564, −0.1600, 0.3226)
    np.testing.assert_allclose(ev.euler_to_intrinsic_xyz(0.1, -0.2, 0.3), [0.156420, -0.160027, 0.322610], atol=1e-6)
    # sending the axis-angle to ManiSkill3 (the old behaviour) would be off by degrees at 0.3 rad
    rpy = np.array([0.3, 0.3, 0.3])
    wrong = Rotation.from_euler("XYZ", ev.euler_to_axis_angle(*rpy)).as_matrix()
    assert np.degrees(Rotation.from_matrix(wrong.T @ Rotation.from_euler("xyz", rpy).as_matrix()).magnitude()) > 1.0


def test_gripper_binarisation_plus_one_open_minus_one_close() -> None:
    # SimplerEnv's Octo/RT-1 Bridge policies: 2 * (open_gripper > 0.5) - 1
    assert [gripper_to_env(g) for g in (1.0, 0.0, 0.5, 0.5001, 0.49, 0.9)] == [1.0, -1.0, -1.0, 1.0, -1.0, 1.0]
    action = to_env_action(np.array([0.01, -0.02, 0.03, 0.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(action, [0.01, -0.02, 0.03, 0.0, 0.0, 0.0, -1.0])
    assert to_env_action(np.array(OPEN))[6] == 1.0
    with pytest.raises(EvaluationError, match="7-d"):
        to_env_action(np.zeros(6))
    with pytest.raises(EvaluationError, match="non-finite"):
        to_env_action(np.array([np.nan, 0, 0, 0, 0, 0, 1]))


def test_denormalised_policy_output_to_env_action_hand_computed() -> None:
    """`predict_chunk` de-normalises with the bundle's Bridge q01/q99 and maps the gripper (unit
    convention); the plugin turns that into the env action. All numbers by hand below."""
    q01 = np.array([-0.02, -0.04, -0.03, -0.1, -0.2, -0.4])
    q99 = np.array([0.02, 0.04, 0.05, 0.1, 0.2, 0.4])
    normalizer = QuantileNormalizer(q01, q99, gripper=GripperConvention("unit"))
    normalized = np.array([[0.5, -1.0, 0.0, 1.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    restored = np.array(normalizer.denormalize(normalized), dtype=np.float64)  # what predict_chunk does …
    restored[:, 6] = normalizer.gripper.to_env(restored[:, 6])  # … then the gripper convention (1 open, 0 closed)
    # arm = (x + 1) / 2 · (q99 − q01) + q01
    np.testing.assert_allclose(restored[0], [0.01, -0.04, 0.01, 0.1, 0.0, 0.2, 1.0], atol=1e-12)
    np.testing.assert_allclose(restored[1], [0.0, 0.0, 0.01, 0.0, 0.0, 0.0, 0.0], atol=1e-12)

    first = to_env_action(restored[0])
    # Rz(0.2)·Rx(0.1): q = qz(0.2)·qx(0.1) = (cos .1 cos .05, cos .1 sin .05, sin .1 sin .05, sin .1 cos .05)
    w, x, y, z = (
        math.cos(0.1) * math.cos(0.05), math.cos(0.1) * math.sin(0.05),
        math.sin(0.1) * math.sin(0.05), math.sin(0.1) * math.cos(0.05),
    )  # fmt: skip
    angle = 2 * math.acos(w)
    axis = np.array([x, y, z]) / math.sqrt(x * x + y * y + z * z)
    np.testing.assert_allclose(first, [0.01, -0.04, 0.01, *(axis * angle), 1.0], atol=1e-12)
    np.testing.assert_allclose(to_env_action(restored[1]), [0.0, 0.0, 0.01, 0.0, 0.0, 0.0, -1.0], atol=1e-12)


# -------------------------------------------------------------------- observation
def test_policy_image_is_the_camera_resized_to_224_like_the_backbone() -> None:
    frame = ((np.arange(480 * 640 * 3).reshape(480, 640, 3) * 31) % 256).astype(np.uint8)
    expected = np.asarray(Image.fromarray(frame).resize((224, 224), Image.Resampling.BICUBIC))
    image = to_policy_image(frame)
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(to_policy_image(torch.from_numpy(frame)[None]), expected)  # ManiSkill3: batched
    small = frame[:224, :224]
    np.testing.assert_array_equal(to_policy_image(small), small)  # already 224: untouched
    with pytest.raises(ValueError, match="H, W, 3"):
        to_policy_image(np.zeros((480, 640)))


# -------------------------------------------------------------------- rollout logic
@pytest.mark.parametrize("backend", ["simpler_env", "maniskill3"])
def test_rollout_runs_the_full_episode_and_reads_success_at_the_last_step(backend: str) -> None:
    sim = FakeBridgeEnv(backend, success_at={10, 60})
    policy = ScriptedPolicy([[0.01, 0.0, -0.01, 0.0, 0.0, math.pi / 2, 1.0], [0.0] * 7])
    record = SimplerBridgeEvaluator().run_episode(_episode(sim), policy, _spec())

    # reset with the episode id, the backend's way
    assert len(sim.reset_calls) == 1
    call = sim.reset_calls[0]
    if backend == "maniskill3":
        assert call["seed"] == 1234 and torch.equal(call["options"]["episode_id"], torch.tensor([5]))
    else:
        assert call["options"] == {"obj_init_options": {"episode_id": 5}}
    # no early stop at step 10: 60 steps, success = the env's report after the last one
    assert len(sim.actions) == 60 and record["steps"] == 60 and record["success"] is True
    assert record["backend"] == backend and record["protocol_steps"] == 60
    assert record["instruction"] == "put carrot on plate"
    assert policy.instructions == ["put carrot on plate"] * 60
    # the policy sees the obs of the step just taken, resized to 224
    for t in (0, 1, 59):
        np.testing.assert_array_equal(policy.images[t], to_policy_image(sim.frames[t]))
    # converted actions (ManiSkill3: batched float32)
    first, second = sim.actions[0], sim.actions[1]
    if backend == "maniskill3":
        assert first.shape == (1, 7) and first.dtype == np.float32
        first, second = first[0], second[0]
    np.testing.assert_allclose(first, [0.01, 0.0, -0.01, 0.0, 0.0, math.pi / 2, 1.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(second, [0.0] * 6 + [-1.0])
    assert record["final_image_crc32"] > 0


def test_success_before_the_last_step_does_not_count() -> None:
    sim = FakeBridgeEnv(success_at={10, 59})  # succeeded, then knocked it off at the very end
    record = SimplerBridgeEvaluator().run_episode(_episode(sim), ScriptedPolicy([OPEN]), _spec())
    assert record["success"] is False and record["steps"] == 60 and len(sim.actions) == 60


def test_eggplant_runs_120_steps_and_max_steps_caps_for_smoke_runs() -> None:
    task = "widowx_put_eggplant_in_basket"
    sim = FakeBridgeEnv(success_at={120})
    record = SimplerBridgeEvaluator().run_episode(_episode(sim, task), ScriptedPolicy([OPEN]), _spec(task))
    assert record["steps"] == 120 and record["success"] is True and record["protocol_steps"] == 120
    sim = FakeBridgeEnv(success_at={7})
    record = SimplerBridgeEvaluator().run_episode(_episode(sim), ScriptedPolicy([OPEN]), _spec(), max_steps=7)
    assert record["steps"] == 7 and record["success"] is True and len(sim.actions) == 7
    sim = FakeBridgeEnv()
    record = SimplerBridgeEvaluator().run_episode(_episode(sim), ScriptedPolicy([OPEN]), _spec(), max_steps=500)
    assert record["steps"] == 60  # never beyond the protocol


def test_chunks_are_executed_through_the_policy_client() -> None:
    sim = FakeBridgeEnv()
    queries: list[np.ndarray] = []

    def query(image: np.ndarray, text: str) -> np.ndarray:
        queries.append(image)
        chunk = np.zeros((4, 7), dtype=np.float32)
        chunk[:, 0] = 0.001 * len(queries) + 0.0001 * np.arange(4)
        chunk[:, 6] = np.array([1.0, 1.0, 0.0, 0.0])
        return chunk

    client = PolicyClient(query, mode="half", chunk_size=4)  # 2 actions per query
    record = SimplerBridgeEvaluator().run_episode(_episode(sim), client, _spec(), max_steps=6)
    assert record["steps"] == 6 and len(queries) == 3
    xs = [float(a[0]) for a in sim.actions]
    np.testing.assert_allclose(xs, [0.001, 0.0011, 0.002, 0.0021, 0.003, 0.0031], rtol=1e-5)
    assert [float(a[6]) for a in sim.actions] == [1.0] * 6
    np.testing.assert_array_equal(queries[1], to_policy_image(sim.frames[2]))


def test_episode_close_closes_the_env() -> None:
    sim = FakeBridgeEnv()
    SimplerBridgeEvaluator().close_env(_episode(sim))
    assert sim.closed


# -------------------------------------------------------------------- backends and assets
def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: set[str] = set()
    monkeypatch.setattr(ev, "_installed", lambda module: module in installed)
    with pytest.raises(SimulatorImportError, match="pip install"):
        ev.resolve_backend()
    installed.add("mani_skill")
    assert ev.resolve_backend() == "maniskill3"
    installed.add("simpler_env")
    assert ev.resolve_backend() == "simpler_env"  # auto prefers the original
    assert ev.resolve_backend("ManiSkill3") == "maniskill3"
    installed.discard("mani_skill")
    with pytest.raises(SimulatorImportError, match="mani_skill is not installed"):
        ev.resolve_backend("maniskill3")
    with pytest.raises(ValueError, match="backend: expected auto, simpler_env or maniskill3"):
        ev.resolve_backend("isaac")
    assert ev.resolve_backend("simpler_env") == "simpler_env"
    # the option is a constructor argument, checked when given and recorded as a setting
    from vlm4vla.evaluation.plugin import load_evaluator

    assert load_evaluator("simpler_bridge", {"backend": "ms3"}).settings()["backend"] == "maniskill3"  # canonical
    with pytest.raises(ValueError, match="backend"):
        SimplerBridgeEvaluator(backend="isaac")
    installed.add("mani_skill")
    evaluator = SimplerBridgeEvaluator(backend="ms3")
    monkeypatch.setattr(ev, "ensure_assets", lambda backend: None)
    evaluator.check_available()
    assert evaluator.settings()["backend"] == "maniskill3"  # resolved before the cells' meta is written


def test_released_gripper_filter_opens_only_after_two_open_predictions() -> None:
    """eval/simpler/model_wrapper.py, widowx_bridge: count consecutive open (+1) predictions, reset
    on a close; the env gets +1 only once the count reaches late_close_gripper = 2."""
    predictions = [+1, +1, +1, -1, +1, -1, -1, +1, +1, -1]
    expected = [-1, +1, +1, -1, -1, -1, -1, -1, +1, -1]  # hand-computed from the released rule
    gripper = ev.ReleasedGripperFilter()
    assert [gripper(p) for p in predictions] == expected


def test_released_protocol_applies_the_filter_in_the_rollout() -> None:
    """Policy gripper 1, 1, 0, 1, 1 (open, open, closed, open, open) → env +1 after two opens."""
    openings = [1.0, 1.0, 0.0, 1.0, 1.0]
    scripted = [[0.0] * 6 + [g] for g in openings]
    for protocol, expected in (("standard", [1.0, 1.0, -1.0, 1.0, 1.0]), ("released", [-1.0, 1.0, -1.0, -1.0, 1.0])):
        sim = FakeBridgeEnv()
        evaluator = SimplerBridgeEvaluator(protocol=protocol)
        evaluator.run_episode(_episode(sim), ScriptedPolicy(scripted), {"task": "widowx_carrot_on_plate", "episode_id": 5}, max_steps=5)
        assert [float(a[6]) for a in sim.actions] == expected, protocol
    assert SimplerBridgeEvaluator(protocol="released").settings()["gripper_filter"] == "late_open_2"
    assert SimplerBridgeEvaluator(protocol="released").protocol_modes() == ("full", "half", "single")


SHARED_MS3 = Path(__file__).resolve().parents[3].parent / "shared" / "simpler-assets" / "ms3"

# What ManiSkill2_real2sim (ef7a4d4) loads for the carrot scene, under its data/ folder — read from
# its put_on_in_scene.py / base_env.py, written out by hand here.
CARROT_FILES_REAL2SIM = (
    "hab2_bench_assets/stages/bridge_table_1_v1.glb",
    "real_inpainting/bridge_real_eval_1.png",
    "custom/info_bridge_custom_v0.json",
    "custom/models/bridge_carrot_generated_modified/collision.obj",
    "custom/models/bridge_carrot_generated_modified/textured.dae",
    "custom/models/bridge_plate_objaverse_larger/collision.obj",
    "custom/models/bridge_plate_objaverse_larger/textured.dae",
)


@pytest.mark.skipif(not SHARED_MS3.is_dir(), reason=f"no ManiSkill3 Bridge assets at {SHARED_MS3}")
def test_maniskill3_asset_check_names_every_missing_scene_file(tmp_path: Path) -> None:
    # The shared folder (the files mani_skill's asset sources unpack) passes for all four scenes …
    environ = {"MS_ASSET_DIR": str(SHARED_MS3)}
    assert ev.ensure_assets("maniskill3", environ) == SHARED_MS3 / "data"
    assert environ["MS_SKIP_ASSET_DOWNLOAD_PROMPT"] == "1"  # never the interactive prompt
    # … a copy without the table mesh does not: SAPIEN would build a scene without a table.
    copy = tmp_path / "ms"
    shutil.copytree(SHARED_MS3, copy)
    task_dir = copy / "data" / "tasks" / "bridge_v2_real2sim_dataset"
    (task_dir / "stages" / "bridge_table_1_v1.glb").unlink()
    (task_dir / "custom" / "models" / "eggplant" / "textured.obj").unlink()  # the only visual mesh there
    with pytest.raises(SimulatorImportError) as err:
        ev.ensure_assets("maniskill3", {"MS_ASSET_DIR": str(copy)})
    message = str(err.value)
    assert "\n" not in message
    assert "tasks/bridge_v2_real2sim_dataset/stages/bridge_table_1_v1.glb" in message
    assert "tasks/bridge_v2_real2sim_dataset/custom/models/eggplant/textured.dae" in message
    assert "download_asset bridge_v2_real2sim -y" in message and "widowx250s" not in message
    # only the eggplant scene needs the eggplant; only the others need the v1 table
    assert ev.ensure_assets("maniskill3", {"MS_ASSET_DIR": str(copy)}, tasks=()) == copy / "data"
    with pytest.raises(SimulatorImportError, match="bridge_table_1_v1.glb"):
        ev.ensure_assets("maniskill3", {"MS_ASSET_DIR": str(copy)}, tasks=["widowx_stack_cube"])
    shutil.rmtree(copy / "data" / "robots")
    with pytest.raises(SimulatorImportError, match="download_asset widowx250s -y"):
        ev.ensure_assets("maniskill3", {"MS_ASSET_DIR": str(copy)}, tasks=[])
    assert ev.maniskill3_asset_dir({}) == Path(os.path.expanduser("~")) / ".maniskill" / "data"


def _real2sim_assets(root: Path) -> Path:
    for name in CARROT_FILES_REAL2SIM:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


def test_simpler_env_assets_are_resolved_in_the_simulators_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ManiSkill2_real2sim's order: $MS2_REAL2SIM_ASSET_DIR, the checkout's data/ if it exists,
    $MS2_ASSET_DIR, ./data. The plugin checks that folder and pins the simulator to it."""
    monkeypatch.chdir(tmp_path)
    checkout = tmp_path / "ManiSkill2_real2sim"
    (checkout / "mani_skill2_real2sim").mkdir(parents=True)
    monkeypatch.setattr(ev, "_real2sim_package_dir", lambda: checkout / "mani_skill2_real2sim")
    carrot = ["widowx_carrot_on_plate"]
    # no checkout data/, $MS2_ASSET_DIR set: that one
    other = _real2sim_assets(tmp_path / "ms2")
    environ = {"MS2_ASSET_DIR": str(other)}
    assert ev.ensure_assets("simpler_env", environ, tasks=carrot) == other
    assert environ["MS2_REAL2SIM_ASSET_DIR"] == str(other)
    # the checkout's data/ exists: it wins over $MS2_ASSET_DIR, and an incomplete one is named
    (checkout / "data" / "custom").mkdir(parents=True)
    with pytest.raises(SimulatorImportError) as err:
        ev.ensure_assets("simpler_env", {"MS2_ASSET_DIR": str(other)}, tasks=carrot)
    message = str(err.value)
    assert str(checkout / "data") in message and "hab2_bench_assets/stages/bridge_table_1_v1.glb" in message
    assert "\n" not in message and "MS2_REAL2SIM_ASSET_DIR" in message
    # $MS2_REAL2SIM_ASSET_DIR beats both
    first = _real2sim_assets(tmp_path / "first")
    assert ev.ensure_assets("simpler_env", {"MS2_REAL2SIM_ASSET_DIR": str(first), "MS2_ASSET_DIR": str(other)},
                            tasks=carrot) == first  # fmt: skip
    # nothing else: ./data
    monkeypatch.setattr(ev, "_real2sim_package_dir", lambda: None)
    local = _real2sim_assets(tmp_path / "data")
    assert ev.ensure_assets("simpler_env", {}, tasks=carrot) == local.resolve()
    # a model with only a .glb visual mesh is fine (the scenes' fallback order obj → dae → glb)
    (local / "custom/models/bridge_plate_objaverse_larger/textured.dae").rename(
        local / "custom/models/bridge_plate_objaverse_larger/textured.glb"
    )
    assert ev.ensure_assets("simpler_env", {}, tasks=carrot) == local.resolve()


def test_a_download_prompt_fails_fast_instead_of_blocking() -> None:
    def prompting_factory() -> Any:
        answer = input("Environment assets not found. Download them now? [y/N] ")
        raise AssertionError(f"the prompt was answered: {answer!r}")

    with pytest.raises(SimulatorImportError, match="stdin"):
        ev._build(prompting_factory, "maniskill3")
    assert sys.stdin is not None and not isinstance(sys.stdin, __import__("io").StringIO)

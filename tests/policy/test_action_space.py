from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlm4vla.errors import ConfigError
from vlm4vla.policy.action_space import (
    GripperConvention,
    IdentityNormalizer,
    QuantileNormalizer,
    RangeNormalizer,
    calvin_normalizer,
    normalizer_from_dict,
)


def test_calvin_normalizer_clips_and_scales_arm_only() -> None:
    norm = calvin_normalizer()
    raw = np.array([[0.65, -0.65, 0.325, 1.0, -1.0, 0.0, -1.0]], dtype=np.float32)
    out = norm.normalize(raw)
    np.testing.assert_allclose(out[0, :6], [1, -1, 0.5, 1, -1, 0], atol=1e-6)
    assert out[0, 6] == -1.0  # gripper column untouched
    back = norm.denormalize(out)
    np.testing.assert_allclose(back[0, :6], [0.65, -0.65, 0.325, 0.65, -0.65, 0.0], atol=1e-6)
    assert raw[0, 0] == np.float32(0.65)  # input not modified in place


def test_quantile_normalizer_maps_q01_q99_to_unit_range() -> None:
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(2000, 7)) * [1, 2, 3, 0.1, 0.2, 0.3, 1]
    norm = QuantileNormalizer.from_actions(actions)
    q01, q99 = np.quantile(actions, [0.01, 0.99], axis=0)
    lo = norm.normalize(np.concatenate([q01[None, :6], [[0.3]]], axis=1))
    hi = norm.normalize(np.concatenate([q99[None, :6], [[0.7]]], axis=1))
    np.testing.assert_allclose(lo[0, :6], -1, atol=1e-9)
    np.testing.assert_allclose(hi[0, :6], 1, atol=1e-9)
    assert lo[0, 6] == 0.3 and hi[0, 6] == 0.7
    clipped = norm.normalize(actions * 10)
    assert np.abs(clipped[:, :6]).max() <= 1.0
    inside = actions[(actions[:, :6] > q01[:6]).all(1) & (actions[:, :6] < q99[:6]).all(1)]
    np.testing.assert_allclose(norm.denormalize(norm.normalize(inside)), inside, atol=1e-9)
    assert norm.stats["count"] == 2000 and len(norm.stats["q01"]) == 7


def test_constant_dimension_does_not_produce_nan() -> None:
    actions = np.zeros((10, 7))
    actions[:, 0] = np.arange(10)
    norm = QuantileNormalizer.from_actions(actions)
    out = norm.normalize(actions)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(norm.denormalize(out)[:, 1:6], 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "norm",
    [
        calvin_normalizer(),
        QuantileNormalizer.from_actions(
            np.random.default_rng(1).normal(size=(50, 7)), gripper=GripperConvention("unit")
        ),
        RangeNormalizer([-1, -2, -3, -4, -5, -6], [1, 2, 3, 4, 5, 6], clip=False),
        IdentityNormalizer(),
        QuantileNormalizer.from_actions(
            np.random.default_rng(3).normal(size=(50, 7)),
            gripper=GripperConvention("unit", target_threshold=1.0),
            action_clip=0.65,
        ),
    ],
)
def test_json_round_trip_and_torch_numpy_agree(norm) -> None:
    rebuilt = normalizer_from_dict(json.loads(json.dumps(norm.to_dict())))
    assert type(rebuilt) is type(norm) and rebuilt == norm
    x = np.random.default_rng(2).normal(size=(3, 4, 7)).astype(np.float32)
    np.testing.assert_allclose(rebuilt.normalize(torch.from_numpy(x)).numpy(), norm.normalize(x), atol=1e-6)
    np.testing.assert_allclose(
        rebuilt.denormalize(torch.from_numpy(x)).numpy(), norm.denormalize(x), atol=1e-5
    )
    assert norm.normalize(torch.from_numpy(x)).dtype == torch.float32


def test_gripper_conventions() -> None:
    signed, unit = GripperConvention("signed"), GripperConvention("unit", 0.5)
    np.testing.assert_array_equal(signed.to_target(np.array([-1.0, 1.0, -1.0])), [0, 1, 0])
    np.testing.assert_array_equal(unit.to_target(np.array([0.0, 0.2, 0.5, 0.9, 1.0])), [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(signed.to_env(np.array([0.1, 0.9])), [-1, 1])
    np.testing.assert_array_equal(unit.to_env(torch.tensor([0.1, 0.9])).numpy(), [0, 1])
    with pytest.raises(ValueError, match="gripper convention"):
        GripperConvention("percent")


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="last dimension"):
        calvin_normalizer().normalize(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        QuantileNormalizer.from_actions(np.full((4, 7), np.nan))
    with pytest.raises(ValueError, match="unknown normaliser type"):
        normalizer_from_dict({"type": "zscore"})


# -- the released second stage: q01/q99 → [-1, 1], then clip ±0.65 and ÷ 0.65 ------------------------
Q01 = [-1, 0, 0, 0, 0, 0]
Q99 = [1, 2, 4, 1, 1, 1]


def test_quantile_then_released_clip_hand_computed() -> None:
    norm = QuantileNormalizer(Q01, Q99, action_clip=0.65)
    raw = np.array([[0.3, 1.0, 4.0, 2.0, -5.0, 0.5, 1.0], [0.5, 1.5, 1.0, 0.8, 0.3, 0.25, 0.0]])
    # stage 1 (q01/q99 → [-1, 1], clipped): [0.3, 0, 1, 1, -1, 0] and [0.5, 0.5, -0.5, 0.6, -0.4, -0.5]
    # stage 2 (clip ±0.65, ÷ 0.65): 0.3 → 6/13, 0.4 → 8/13, 0.5 → 10/13, 0.6 → 12/13, ±1 → ±1
    expected = np.array(
        [[6 / 13, 0, 1, 1, -1, 0, 1.0], [10 / 13, 10 / 13, -10 / 13, 12 / 13, -8 / 13, -10 / 13, 0.0]]
    )
    np.testing.assert_allclose(norm.normalize(raw), expected, atol=1e-12)
    # inverse: ×0.65 then the q01/q99 map; a value clipped by stage 2 comes back at the band edge
    # q01 + 0.825·(q99 - q01) (dim 2: 3.3, dim 3: 0.825) or q01 + 0.175·(q99 - q01) (dim 4: 0.175)
    back = norm.denormalize(expected)
    np.testing.assert_allclose(back[0], [0.3, 1.0, 3.3, 0.825, 0.175, 0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(back[1], raw[1], atol=1e-12)  # inside the ±0.65 band: exact
    plain = QuantileNormalizer(Q01, Q99)
    np.testing.assert_allclose(plain.normalize(raw)[0, :6], [0.3, 0, 1, 1, -1, 0], atol=1e-12)


def test_released_clip_round_trip_numpy_and_torch() -> None:
    rng = np.random.default_rng(4)
    actions = rng.normal(size=(5000, 7)) * [0.01, 0.02, 0.03, 0.1, 0.1, 0.2, 1]
    norm = QuantileNormalizer.from_actions(actions, action_clip=0.65)
    out = norm.normalize(actions)
    assert np.abs(out[:, :6]).max() <= 1.0 and (np.abs(out[:, :6]) == 1.0).any()
    # actions whose stage-1 value is within ±0.65 invert exactly
    unit = QuantileNormalizer(norm.low, norm.high).normalize(actions)[:, :6]
    inside = actions[(np.abs(unit) < 0.65).all(1)]
    assert len(inside) > 1000
    np.testing.assert_allclose(norm.denormalize(norm.normalize(inside)), inside, atol=1e-9)
    x = torch.from_numpy(inside.astype(np.float32))
    np.testing.assert_allclose(norm.denormalize(norm.normalize(x)).numpy(), inside, atol=1e-6)
    # model outputs in [-1, 1] → the band of the q01/q99 range the released eval can reach
    extremes = norm.denormalize(np.array([[-1.0] * 6 + [0.0], [1.0] * 6 + [0.0]]))
    np.testing.assert_allclose(extremes[0, :6], norm.low + 0.175 * (norm.high - norm.low), atol=1e-12)
    np.testing.assert_allclose(extremes[1, :6], norm.low + 0.825 * (norm.high - norm.low), atol=1e-12)


def test_released_clip_serialised_and_old_dicts_load_plain() -> None:
    norm = QuantileNormalizer(Q01, Q99, action_clip=0.65, gripper=GripperConvention("unit"))
    data = json.loads(json.dumps(norm.to_dict()))
    assert data["action_clip"] == 0.65
    rebuilt = normalizer_from_dict(data)
    assert rebuilt == norm and rebuilt.action_clip == 0.65
    old = {k: v for k, v in data.items() if k != "action_clip"}  # a bundle written before
    legacy = normalizer_from_dict(old)
    assert legacy.action_clip is None and legacy == QuantileNormalizer(Q01, Q99, gripper=GripperConvention("unit"))
    assert legacy.normalize(np.array([[0.3, 0, 0, 0, 0, 0, 0]]))[0, 0] == pytest.approx(0.3)
    assert norm.with_action_clip(None) == legacy and legacy.with_action_clip(0.65) == norm
    for bad in (0, -0.5, 1.5, "x"):
        with pytest.raises(ConfigError, match="action_clip"):
            QuantileNormalizer(Q01, Q99, action_clip=bad)


def test_gripper_target_threshold() -> None:
    released = GripperConvention("unit", threshold=0.5, target_threshold=1.0)
    raw = np.array([0.0, 0.3, 0.5, 0.99, 1.0])
    np.testing.assert_array_equal(released.to_target(raw), [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(released.to_target(torch.tensor(raw)).numpy(), [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(released.to_env(np.array([0.4, 0.6])), [0, 1])  # env cut stays 0.5
    assert GripperConvention.from_dict(released.to_dict()) == released
    assert "target_threshold" not in GripperConvention("unit").to_dict()  # older bundles unchanged
    with pytest.raises(ConfigError, match="target_threshold"):
        GripperConvention("signed", target_threshold=1.0)

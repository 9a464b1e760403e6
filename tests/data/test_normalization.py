from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlm4vla.data.normalization import (
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

"""Action normalisation (paper notes §4) and the gripper convention of each dataset.

A normaliser maps the 6 arm dimensions of a raw action to [-1, 1] and back; the gripper
column (index 6) passes through :meth:`~ActionNormalizer.normalize` and
:meth:`~ActionNormalizer.denormalize` untouched. The gripper is handled separately by a
:class:`GripperConvention`: :meth:`~GripperConvention.to_target` turns the dataset's raw
gripper value into the training target in {0, 1}, :meth:`~GripperConvention.to_env` turns a
predicted probability back into the dataset's / simulator's units.

- CALVIN (:func:`calvin_normalizer`): relative actions clipped to ±0.65, divided by 0.65.
  Gripper ``signed``: raw -1/+1 → 0/1 (+1 → 1). In CALVIN +1 means *open*.
- LIBERO (:func:`QuantileNormalizer.from_actions`): per-dimension 1st/99th percentiles of the
  training actions mapped to -1/+1 and clipped, then (``action_clip=0.65``, the released
  code's ``norm_action``) clipped to ±0.65 and divided by 0.65. Gripper ``signed``:
  -1 (open) → 0, +1 (close) → 1.
- Bridge: the same quantile normaliser. Gripper ``unit``: absolute opening 0..1 binarised at
  0.5 (1 = open); after OpenVLA's ``bridge_orig`` transform the target is 1 only for a
  binarised 1.0 (``target_threshold=1.0``), as in the released code.

Every normaliser is JSON-serialisable: ``normalizer_from_dict(n.to_dict())`` rebuilds it,
which is how statistics travel into checkpoints and policy bundles.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from vlm4vla.errors import ConfigError

ARM_DIMS = 6
ACTION_DIM = 7

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class GripperConvention:
    """How a dataset encodes the gripper and how it maps to the {0, 1} training target.

    ``kind="signed"``: raw values are -1/+1; target = 1 where raw > 0; env value = +1 where
    the predicted probability > ``threshold``, else -1.
    ``kind="unit"``: raw values are in [0, 1]; target = 1 where raw >= ``target_threshold``
    (default: ``threshold``); env value = 1.0 / 0.0 at ``threshold``.
    """

    kind: str = "signed"
    threshold: float = 0.5
    #: Training-target cut of ``unit`` grippers when it differs from the env threshold. The
    #: released Bridge pipeline labels "open" only the exact 1.0 of its binarised gripper
    #: (``refine_action_at_gripper_dim``), so a trailing in-between raw value is 0, not >= 0.5.
    target_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("signed", "unit"):
            raise ConfigError(f"unknown gripper convention {self.kind!r}; expected 'signed' or 'unit'")
        if self.target_threshold is not None and self.kind != "unit":
            raise ConfigError("target_threshold applies to the 'unit' gripper convention only")

    def to_target(self, raw: ArrayT) -> ArrayT:
        """Raw gripper values → float targets in {0, 1}."""
        cut = 0.0 if self.kind == "signed" else self._target_cut
        if isinstance(raw, torch.Tensor):
            mask = raw > cut if self.kind == "signed" else raw >= cut
            return mask.to(raw.dtype if raw.is_floating_point() else torch.float32)
        raw_arr = np.asarray(raw)
        mask = raw_arr > cut if self.kind == "signed" else raw_arr >= cut
        return mask.astype(raw_arr.dtype if np.issubdtype(raw_arr.dtype, np.floating) else np.float32)

    def to_env(self, probability: ArrayT) -> ArrayT:
        """Predicted close/open probability (or binary target) → the dataset's gripper units."""
        if isinstance(probability, torch.Tensor):
            on = (probability > self.threshold).to(probability.dtype)
        else:
            probability = np.asarray(probability)
            on = (probability > self.threshold).astype(probability.dtype)
        return on * 2 - 1 if self.kind == "signed" else on

    @property
    def _target_cut(self) -> float:
        return self.threshold if self.target_threshold is None else self.target_threshold

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "threshold": float(self.threshold)}
        if self.target_threshold is not None:  # absent key = older bundles, same meaning
            out["target_threshold"] = float(self.target_threshold)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GripperConvention:
        target = data.get("target_threshold")
        return cls(
            kind=str(data["kind"]),
            threshold=float(data.get("threshold", 0.5)),
            target_threshold=None if target is None else float(target),
        )


class ActionNormalizer(abc.ABC):
    """Base class: arm dimensions to [-1, 1] and back, gripper column untouched."""

    type_name: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[ActionNormalizer]]] = {}

    def __init__(self, gripper: GripperConvention | None = None) -> None:
        self.gripper = gripper if gripper is not None else GripperConvention()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            ActionNormalizer._registry[cls.type_name] = cls

    # -- to be provided by subclasses -------------------------------------------------------
    @abc.abstractmethod
    def _normalize_arm(self, arm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Provided by each normaliser."""

    @abc.abstractmethod
    def _denormalize_arm(self, arm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Provided by each normaliser."""

    @abc.abstractmethod
    def _params(self) -> dict[str, Any]:
        """Provided by each normaliser."""

    # -- public API --------------------------------------------------------------------------
    def normalize(self, actions: ArrayT) -> ArrayT:
        """Normalise ``(..., 7)`` (or arm-only ``(..., 6)``) actions; the gripper is copied as is."""
        return self._apply(actions, self._normalize_arm)

    def denormalize(self, actions: ArrayT) -> ArrayT:
        """Invert :meth:`normalize` (clipped values come back at the clip bounds)."""
        return self._apply(actions, self._denormalize_arm)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "gripper": self.gripper.to_dict(), **self._params()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionNormalizer:
        return normalizer_from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActionNormalizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"

    def _apply(self, actions: ArrayT, fn: Any) -> ArrayT:
        dim = actions.shape[-1]
        if dim not in (ARM_DIMS, ACTION_DIM):
            raise ValueError(f"actions must have last dimension 6 or 7, got shape {tuple(actions.shape)}")
        if isinstance(actions, torch.Tensor):
            out = actions.clone()
        else:
            out = np.array(actions, copy=True)
        out[..., :ARM_DIMS] = fn(actions[..., :ARM_DIMS])
        return out

    @staticmethod
    def _vector(values: np.ndarray, like: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        if isinstance(like, torch.Tensor):
            return torch.as_tensor(
                values, dtype=like.dtype if like.is_floating_point() else torch.float32, device=like.device
            )
        return values.astype(like.dtype if np.issubdtype(like.dtype, np.floating) else np.float32)


class RangeNormalizer(ActionNormalizer):
    """Affine map of ``[low, high]`` (per arm dimension) onto [-1, 1], optionally clipped."""

    type_name = "range"

    def __init__(self, low: Any, high: Any, *, clip: bool = True, gripper: GripperConvention | None = None):
        super().__init__(gripper)
        self.low = np.broadcast_to(np.asarray(low, dtype=np.float64), (ARM_DIMS,)).copy()
        self.high = np.broadcast_to(np.asarray(high, dtype=np.float64), (ARM_DIMS,)).copy()
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise ValueError(f"normaliser bounds must be finite, got low={self.low}, high={self.high}")
        if np.any(self.high < self.low):
            raise ValueError(f"normaliser bounds need high >= low, got low={self.low}, high={self.high}")
        self.clip = bool(clip)

    @property
    def _span(self) -> np.ndarray:
        # A constant dimension (high == low) maps to 0 and back to ``low``.
        return np.maximum(self.high - self.low, 1e-8)

    def _normalize_arm(self, arm):  # type: ignore[override]
        low, span = self._vector(self.low, arm), self._vector(self._span, arm)
        out = 2 * (arm - low) / span - 1
        if self.clip:
            out = out.clamp(-1, 1) if isinstance(out, torch.Tensor) else np.clip(out, -1, 1)
        return out

    def _denormalize_arm(self, arm):  # type: ignore[override]
        low, span = self._vector(self.low, arm), self._vector(self._span, arm)
        return (arm + 1) / 2 * span + low

    def _params(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "clip": self.clip}

    @classmethod
    def _from_params(cls, data: Mapping[str, Any], gripper: GripperConvention) -> RangeNormalizer:
        return cls(data["low"], data["high"], clip=bool(data.get("clip", True)), gripper=gripper)


RELEASED_ACTION_CLIP = 0.65


def check_action_clip(action_clip: Any) -> float | None:
    """``None`` or a bound in (0, 1] (above 1 the clip of [-1, 1] values would do nothing and the
    division would only shrink the range)."""
    if action_clip is None:
        return None
    try:
        value = float(action_clip)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"action_clip must be a number in (0, 1] or null, got {action_clip!r}") from err
    if not 0 < value <= 1:
        raise ConfigError(f"action_clip must be in (0, 1] or null, got {action_clip!r}")
    return value


class QuantileNormalizer(RangeNormalizer):
    """Per-dimension q01/q99 of the training actions → [-1, 1], clipped (Bridge, LIBERO).

    With ``action_clip=c`` a second stage follows: clip to ±c and divide by c, as the released
    VLM4VLA code does on top of OpenVLA's q01/q99 normalisation for Bridge and LIBERO
    (``norm_action: true``, ``norm_min/max: ∓0.65`` in every config; ``normalize_action`` in
    ``vlm4vla/data/data_utils.py``). :meth:`denormalize` inverts both: ×c, then the q01/q99 map.

    ``stats`` keeps the full summary (mean, std, min, max, q01, q99 of all 7 dims, count) for
    inspection; only ``q01``/``q99`` of the arm dims are used.
    """

    type_name = "quantile"

    def __init__(
        self,
        q01: Any,
        q99: Any,
        *,
        stats: Mapping[str, Any] | None = None,
        gripper: GripperConvention | None = None,
        action_clip: float | None = None,
    ) -> None:
        q01 = np.asarray(q01, dtype=np.float64)[:ARM_DIMS]
        q99 = np.asarray(q99, dtype=np.float64)[:ARM_DIMS]
        super().__init__(q01, q99, clip=True, gripper=gripper)
        self.stats = dict(stats) if stats is not None else {}
        self.action_clip = check_action_clip(action_clip)

    def with_action_clip(self, action_clip: float | None) -> QuantileNormalizer:
        """The same statistics and gripper with another second stage (``None``: q01/q99 only)."""
        return QuantileNormalizer(
            self.low, self.high, stats=self.stats, gripper=self.gripper, action_clip=action_clip
        )

    def _normalize_arm(self, arm):  # type: ignore[override]
        out = super()._normalize_arm(arm)
        if self.action_clip is None:
            return out
        c = self.action_clip
        return (out.clamp(-c, c) if isinstance(out, torch.Tensor) else np.clip(out, -c, c)) / c

    def _denormalize_arm(self, arm):  # type: ignore[override]
        if self.action_clip is not None:
            arm = arm * self.action_clip
        return super()._denormalize_arm(arm)

    @classmethod
    def from_actions(
        cls,
        actions: np.ndarray,
        *,
        gripper: GripperConvention | None = None,
        action_clip: float | None = None,
    ) -> QuantileNormalizer:
        """Compute the statistics from raw ``(T, 7)`` actions (all training steps)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or len(actions) == 0:
            raise ValueError(f"need non-empty (T, 7) actions to compute statistics, got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("cannot compute action statistics: actions contain NaN or inf")
        q01, q99 = np.quantile(actions, [0.01, 0.99], axis=0)
        stats = {
            "count": len(actions),
            "mean": actions.mean(0).tolist(),
            "std": actions.std(0).tolist(),
            "min": actions.min(0).tolist(),
            "max": actions.max(0).tolist(),
            "q01": q01.tolist(),
            "q99": q99.tolist(),
        }
        return cls(q01, q99, stats=stats, gripper=gripper, action_clip=action_clip)

    def _params(self) -> dict[str, Any]:
        return {
            "q01": self.low.tolist(),
            "q99": self.high.tolist(),
            "action_clip": self.action_clip,
            "stats": self.stats,
        }

    @classmethod
    def _from_params(cls, data: Mapping[str, Any], gripper: GripperConvention) -> QuantileNormalizer:
        # Bundles written before the second stage existed have no "action_clip": plain q01/q99.
        return cls(
            data["q01"], data["q99"], stats=data.get("stats"), gripper=gripper, action_clip=data.get("action_clip")
        )


class IdentityNormalizer(ActionNormalizer):
    """No arm normalisation (for datasets already in [-1, 1] or for inspection)."""

    type_name = "identity"

    def _normalize_arm(self, arm):  # type: ignore[override]
        return arm.clone() if isinstance(arm, torch.Tensor) else np.array(arm, copy=True)

    _denormalize_arm = _normalize_arm

    def _params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_params(cls, data: Mapping[str, Any], gripper: GripperConvention) -> IdentityNormalizer:
        return cls(gripper=gripper)


CALVIN_ACTION_BOUND = 0.65


def calvin_normalizer(bound: float = CALVIN_ACTION_BOUND) -> RangeNormalizer:
    """CALVIN relative actions: clip to ±``bound`` and scale to [-1, 1]; gripper -1/+1."""
    return RangeNormalizer(-bound, bound, clip=True, gripper=GripperConvention("signed"))


def normalizer_from_dict(data: Mapping[str, Any]) -> ActionNormalizer:
    """Rebuild any normaliser from its :meth:`ActionNormalizer.to_dict` output."""
    try:
        cls = ActionNormalizer._registry[str(data["type"])]
    except KeyError as err:
        known = ", ".join(sorted(ActionNormalizer._registry))
        raise ConfigError(f"unknown normaliser type {data.get('type')!r} (known: {known})") from err
    gripper = GripperConvention.from_dict(data.get("gripper", {"kind": "signed"}))
    return cls._from_params(data, gripper)  # type: ignore[attr-defined]


__all__ = [
    "ACTION_DIM",
    "ARM_DIMS",
    "CALVIN_ACTION_BOUND",
    "ActionNormalizer",
    "GripperConvention",
    "IdentityNormalizer",
    "QuantileNormalizer",
    "RELEASED_ACTION_CLIP",
    "RangeNormalizer",
    "calvin_normalizer",
    "check_action_clip",
    "normalizer_from_dict",
]

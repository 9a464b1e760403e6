"""Bridge-V2 datamodule: RLDS (``bridge_dataset/1.0.0``) or a LeRobot port.

A sample is one frame of an episode: the primary camera (``image_0`` in RLDS; configurable
with ``image_key`` — and the actions with ``action_key``, the states with ``state_key``, the RLDS
instruction with ``instruction_key`` — for ports that name them differently), the episode's
instruction, the next N actions with a mask for steps past the episode end. Images are used as
stored (upright).

Actions (``action_transform``):

- ``"bridge_orig"`` (default; what the released VLM4VLA code trains on, through OpenVLA's
  ``bridge_orig`` standardisation, see :class:`~vlm4vla.data.episode_transforms.BridgeOrig`):
  the first step is dropped, the arm actions are the reached-state deltas
  ``state[t+1, :6] - state[t, :6]`` of ``observation/state`` (RLDS ``steps/observation/state``,
  LeRobot ``observation.state``; the last step is dropped), the gripper is binarised with
  hysteresis (> 0.95 open, < 0.05 closed, in between = the next stable value) and the training
  target is 1 for a binarised 1 only. Episodes without an instruction are skipped (counted in
  the log).
- ``None``: the stored actions, the absolute gripper opening 0..1 binarised at 0.5 (1 = open).

The 6 arm dims are normalised with the training split's q01/q99 of these actions (cached in
``vlm4vla_stats.json`` next to the data, keyed on the action transform), then by default clipped to
±0.65 and divided by 0.65 (``action_clip``; ``None`` for q01/q99 only).
Splits: the RLDS ``val`` split when present, else by episode with ``split_seed``. Training
images are resized to 224² (Lanczos) and get OpenVLA's seeded crop (scale 0.9) and colour jitter, as
released (:func:`~vlm4vla.data.transforms.openvla_image_transform`); validation images are as
stored (the backbone resizes them, bicubic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm4vla.data.datamodule import EpisodeDataModule
from vlm4vla.data.episode_transforms import BridgeOrig, EpisodeTransform
from vlm4vla.data.transforms import ImageTransform, openvla_image_transform
from vlm4vla.policy.action_space import GripperConvention

BRIDGE_FORMATS = ("rlds", "lerobot")
BRIDGE_TRANSFORMS = ("bridge_orig", None)


class BridgeDataModule(EpisodeDataModule):
    """BridgeData V2.

    Args:
        root: an RLDS directory (``features.json`` + tfrecords, or its parent) or a LeRobot
            dataset root (``meta/info.json``).
        format: ``"rlds"`` or ``"lerobot"``; detected from the files when None.
        image_key: camera to use (default ``image_0`` for RLDS, the reader's default for LeRobot).
        action_key: action field (default ``steps/action`` for RLDS, ``action`` for LeRobot).
        instruction_key: RLDS text feature of the instruction (default
            ``steps/language_instruction``); LeRobot has none to choose (``meta/tasks``).
        state_key: the observation state the ``bridge_orig`` relabelling reads (default
            ``steps/observation/state`` for RLDS, ``observation.state`` for LeRobot).
        action_transform: ``"bridge_orig"`` (default, as released) or ``None`` (stored actions,
            gripper >= 0.5); see the module docstring.
        action_clip: second normalisation stage, ±bound after q01/q99 (default 0.65 as released;
            ``None``: q01/q99 only). Stored in the normaliser, so bundles invert it.
        crop_scale: random-resized-crop area fraction for training augmentation.
        chunk_size: N (paper: 4). Other arguments: see
            :class:`~vlm4vla.data.datamodule.EpisodeDataModule` and
            :class:`~vlm4vla.data.datamodule.VLADataModule`.
    """

    dataset_name = "bridge"
    formats = BRIDGE_FORMATS
    gripper = GripperConvention("unit", threshold=0.5)

    def __init__(
        self,
        root: str | Path,
        *,
        chunk_size: int = 4,
        action_transform: str | None = "bridge_orig",
        crop_scale: float = 0.9,
        **kwargs: Any,
    ) -> None:
        if action_transform not in BRIDGE_TRANSFORMS:
            raise ValueError(
                f"BridgeDataModule: action_transform must be 'bridge_orig' or None, got {action_transform!r}"
            )
        super().__init__(root, chunk_size=chunk_size, **kwargs)
        self.action_transform = action_transform
        self.crop_scale = float(crop_scale)
        if action_transform == "bridge_orig":
            # released target: 1 only for a binarised 1.0 (a trailing in-between raw value is 0)
            self.gripper = GripperConvention("unit", threshold=0.5, target_threshold=1.0)

    def default_image_key(self, fmt: str) -> str | None:
        return "image_0" if fmt == "rlds" else None

    def episode_transform(self) -> EpisodeTransform | None:
        return BridgeOrig() if self.action_transform == "bridge_orig" else None

    def crop_scale_trained(self) -> float | None:
        return self.crop_scale

    def train_transform(self) -> ImageTransform | None:
        # The released OpenVLA RLDS pipeline: Lanczos resize, crop, colour jitter (vlm4vla.data.transforms).
        return openvla_image_transform(augment=True, size=self.image_size, crop_scale=self.crop_scale)


__all__ = ["BRIDGE_FORMATS", "BridgeDataModule"]

"""Bridge-V2 datamodule: RLDS (``bridge_dataset/1.0.0``) or a LeRobot port.

A sample is one frame of an episode: the primary camera (``image_0`` in RLDS; configurable
with ``image_key`` — and the actions with ``action_key``, the RLDS instruction with
``instruction_key`` — for ports that name them differently), the episode's instruction, the next N
actions — 6 delta end-effector dims normalised with the training split's q01/q99 (cached in
``vlm4vla_stats.json`` next to the data), and the absolute gripper opening 0..1 binarised at 0.5
(1 = open) — with a mask for steps past the episode end. Images are used as stored (upright).
Splits: the RLDS ``val`` split when present, else by episode with ``split_seed``. Training
images get a seeded random-resized-crop (scale 0.9), validation none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm4vla.data.datamodule import EpisodeDataModule
from vlm4vla.data.normalization import GripperConvention
from vlm4vla.data.transforms import ImageTransform, RandomResizedCrop

BRIDGE_FORMATS = ("rlds", "lerobot")


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
        crop_scale: random-resized-crop area fraction for training augmentation.
        chunk_size: N (paper: 4). Other arguments: see
            :class:`~vlm4vla.data.datamodule.EpisodeDataModule` and
            :class:`~vlm4vla.data.datamodule.VLADataModule`.
    """

    dataset_name = "bridge"
    formats = BRIDGE_FORMATS
    gripper = GripperConvention("unit", threshold=0.5)

    def __init__(
        self, root: str | Path, *, chunk_size: int = 4, crop_scale: float = 0.9, **kwargs: Any
    ) -> None:
        super().__init__(root, chunk_size=chunk_size, **kwargs)
        self.crop_scale = float(crop_scale)

    def default_image_key(self, fmt: str) -> str | None:
        return "image_0" if fmt == "rlds" else None

    def train_transform(self) -> ImageTransform | None:
        return RandomResizedCrop(self.crop_scale)


__all__ = ["BRIDGE_FORMATS", "BridgeDataModule"]

"""LIBERO-10 datamodule: original HDF5 demos, LeRobot ports or RLDS (``libero_10_no_noops``).

Image orientation convention
----------------------------
Samples carry the third-person image **upright**. LIBERO's simulator renders
``agentview_image`` upside down and the original HDF5 demos store ``obs/agentview_rgb`` the
same way, so for the ``hdf5`` format every frame is rotated by 180° (flipped vertically and
horizontally) with :func:`vlm4vla.imaging.libero_image_to_upright` (readers say so with their
``stored_rotated_180`` attribute). The LIBERO evaluator must call the same
function on ``obs["agentview_image"]`` before querying the policy. The RLDS and LeRobot ports
already store upright images (rotated 180° relative to the HDF5), so they are used as stored;
``rotate_180=True/False`` overrides the per-format default. (OpenVLA's
``regenerate_libero_dataset.py`` writes the simulator's raw, upside-down ``agentview_image``;
its RLDS conversion ``libero_10_no_noops`` holds them upright, and OpenVLA's and the released
VLM4VLA LIBERO evaluators rotate the simulator image by 180° "to match train preprocessing".)

Actions: 6 delta end-effector dims normalised with the training split's q01/q99 (cached in
``vlm4vla_stats.json`` next to the data), then by default clipped to ±0.65 and divided by 0.65
(``action_clip``, as every released LIBERO config does); gripper -1 (open) / +1 (close) → 0 / 1.
``drop_noops=True`` removes no-op steps (frames and actions together) with the filter OpenVLA
used to build ``libero_10_no_noops`` (:class:`~vlm4vla.data.episode_transforms.DropNoops`), so
the original HDF5 demos give the same steps; it cannot drop the demos whose replay failed
there, nor re-render at 256². Splits: by episode with ``split_seed`` (``val_fraction`` of the
episodes held out; 0 for none), or the RLDS ``val`` split when the dataset has one. Training
images are resized to 224² (Lanczos) and get OpenVLA's seeded crop (scale 0.9) and colour jitter, as
released (:func:`~vlm4vla.data.transforms.openvla_image_transform`); validation images are as
stored (the backbone resizes them, bicubic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm4vla.data.datamodule import EpisodeDataModule
from vlm4vla.data.episode_transforms import DropNoops, EpisodeTransform
from vlm4vla.data.formats.base import EpisodeReader
from vlm4vla.data.transforms import ImageTransform, openvla_image_transform
from vlm4vla.policy.action_space import GripperConvention

LIBERO_FORMATS = ("hdf5", "lerobot", "rlds")


class LiberoDataModule(EpisodeDataModule):
    """LIBERO (any suite; the paper uses LIBERO-10).

    Args:
        root: a directory of ``*_demo.hdf5`` files, a LeRobot dataset root (``meta/info.json``)
            or an RLDS directory (``features.json`` + tfrecords, or its parent).
        format: ``"hdf5"``, ``"lerobot"`` or ``"rlds"``; detected from the files when None.
        image_key: camera to use (defaults: ``agentview_rgb`` for HDF5, ``image`` for RLDS, the
            reader's default for LeRobot: ``observation.images.image``, ``image``, ...).
        action_key: action field (defaults: ``actions`` for HDF5, ``action`` for LeRobot,
            ``steps/action`` for RLDS). openpi's LeRobot port of LIBERO needs
            ``action_key="actions", image_key="image"``.
        instruction_key: RLDS text feature of the instruction (default
            ``steps/language_instruction``); HDF5 and LeRobot have none to choose (``problem_info``,
            ``meta/tasks``), so it must stay None for them.
        rotate_180: override the per-format orientation fix (see the module docstring).
        drop_noops: drop OpenVLA's no-op steps (meant for the original HDF5; the RLDS
            ``*_no_noops`` ports have none left, and the filter leaves them unchanged).
        action_clip: second normalisation stage, ±bound after q01/q99 (default 0.65 as released;
            ``None``: q01/q99 only). Stored in the normaliser, so bundles invert it.
        crop_scale: random-resized-crop area fraction for training augmentation.
        chunk_size: N (paper: 4). Other arguments: see
            :class:`~vlm4vla.data.datamodule.EpisodeDataModule` and
            :class:`~vlm4vla.data.datamodule.VLADataModule`.
    """

    dataset_name = "libero"
    formats = LIBERO_FORMATS
    gripper = GripperConvention("signed")

    def __init__(
        self,
        root: str | Path,
        *,
        chunk_size: int = 4,
        rotate_180: bool | None = None,
        drop_noops: bool = False,
        crop_scale: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, chunk_size=chunk_size, **kwargs)
        self.rotate_180 = rotate_180
        self.drop_noops = bool(drop_noops)
        self.crop_scale = float(crop_scale)

    def default_image_key(self, fmt: str) -> str | None:
        return {"hdf5": "agentview_rgb", "rlds": "image"}.get(fmt)

    def episode_transform(self) -> EpisodeTransform | None:
        return DropNoops() if self.drop_noops else None

    def data_options(self) -> dict[str, Any]:
        return {**super().data_options(), "rotate_180": self.rotate_180}

    def rotate_images(self, reader: EpisodeReader) -> bool:
        return super().rotate_images(reader) if self.rotate_180 is None else bool(self.rotate_180)

    def crop_scale_trained(self) -> float | None:
        return self.crop_scale

    def train_transform(self) -> ImageTransform | None:
        # The released OpenVLA RLDS pipeline: Lanczos resize, crop, colour jitter (vlm4vla.data.transforms).
        return openvla_image_transform(augment=True, size=self.image_size, crop_scale=self.crop_scale)


__all__ = ["LIBERO_FORMATS", "LiberoDataModule"]

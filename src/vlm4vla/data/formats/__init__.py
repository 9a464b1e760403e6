"""Readers of on-disk dataset formats.

``calvin`` npz frames (:mod:`.npz_calvin`), LIBERO HDF5 (:mod:`.hdf5_libero`), LeRobot
v2.1/v3.0 (:mod:`.lerobot`) and RLDS/TFDS tfrecords (:mod:`.rlds`). Readers are imported
lazily by :func:`open_episode_reader` so a missing optional format never breaks the others.
"""

from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader, check_actions, describe_episode
from vlm4vla.data.formats.detect import EPISODE_FORMATS, detect_format, open_episode_reader, resolve_rlds_root

__all__ = [
    "EPISODE_FORMATS",
    "DatasetFormatError",
    "EpisodeReader",
    "check_actions",
    "describe_episode",
    "detect_format",
    "open_episode_reader",
    "resolve_rlds_root",
]

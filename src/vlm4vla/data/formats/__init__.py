"""Readers of on-disk dataset formats.

``calvin`` npz frames (:mod:`.npz_calvin`), LIBERO HDF5 (:mod:`.hdf5_libero`), LeRobot
v2.1/v3.0 (:mod:`.lerobot`) and RLDS/TFDS tfrecords (:mod:`.rlds`). Episode formats register
with :func:`register_format`; reader modules are imported on the first format lookup, not here.
"""

from vlm4vla.data.formats.base import DatasetFormatError, EpisodeReader, check_actions, describe_episode
from vlm4vla.data.formats.detect import detect_format, open_episode_reader
from vlm4vla.data.formats.registry import EpisodeFormat, episode_formats, get_format, register_format

__all__ = [
    "DatasetFormatError",
    "EpisodeFormat",
    "EpisodeReader",
    "check_actions",
    "describe_episode",
    "detect_format",
    "episode_formats",
    "get_format",
    "open_episode_reader",
    "register_format",
]

"""The contract every episode reader implements, and what readers share: the error type,
action checks, JSON metadata and image decoding.

Datamodules for LIBERO and Bridge read episodes through this protocol, so a new format
(or a Hub port with other key names) only needs a new reader. CALVIN is frame-indexed with
separate language windows and has its own reader.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from vlm4vla.errors import VLM4VLAError, one_line


class DatasetFormatError(VLM4VLAError, ValueError):
    """Bad or missing data on disk. The message names the file and the field."""


@runtime_checkable
class EpisodeReader(Protocol):
    """Random access to the episodes of one split of a dataset.

    Readers open files lazily (per worker process) and never load a whole episode's images
    when one frame is asked for.
    """

    root: Path

    def __len__(self) -> int:
        """Number of episodes."""

    def episode_length(self, episode: int) -> int:
        """Number of frames (= number of actions) of an episode."""

    def instruction(self, episode: int) -> str:
        """The episode's language instruction."""

    def actions(self, episode: int) -> np.ndarray:
        """Raw (un-normalised) actions, float32 of shape (T, 7)."""

    def frame(self, episode: int, step: int) -> np.ndarray:
        """The primary third-person RGB image at ``step``: uint8 (H, W, 3), as stored on disk."""


# Optional reader methods, looked up with ``getattr`` (not part of the runtime-checked protocol):
#   episode_source(episode) -> str   human-readable location ("file.hdf5:data/demo_3") used in
#                                    error and log messages, see :func:`describe_episode`.
#   close() -> None                  release open file handles (called after index building in
#                                    the main process, before DataLoader workers fork).
#   states(episode, key=None)        the episode's observation states, float32 (T, D), from the
#     -> np.ndarray                  reader's state field (``key`` overrides its default: RLDS
#                                    ``steps/observation/state``, LeRobot ``observation.state``);
#                                    needed by action transforms that relabel from states
#                                    (Bridge ``bridge_orig``).
# Optional attribute:
#   stored_rotated_180: bool         frames are stored upside down (LIBERO HDF5); datamodules
#                                    rotate them by 180° to upright. Absent means False.


def read_json(path: Path, what: str) -> Any:
    """A JSON metadata file (``what`` names it in the error: ``"info.json"``)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{path}: {what} not found") from err
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"{path}: cannot read {what} ({one_line(err)})") from err


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG) as uint8 RGB (H, W, 3); ``where`` names the field in the error."""
    try:
        with Image.open(BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:  # PIL raises many types on corrupt data
        raise DatasetFormatError(f"{where} is not a decodable image ({err})") from err


def close_reader(reader: EpisodeReader) -> None:
    """Release a reader's open files if it has the optional ``close()`` (they reopen lazily)."""
    close = getattr(reader, "close", None)
    if callable(close):
        close()


def describe_episode(reader: EpisodeReader, episode: int) -> str:
    """Where an episode lives, for error and log messages.

    Readers may implement the optional method ``episode_source(episode) -> str`` (e.g.
    ``"libero_10/TASK_demo.hdf5:data/demo_3"``); otherwise the reader's root and the episode
    number are used.
    """
    source = getattr(reader, "episode_source", None)
    if callable(source):
        return str(source(episode))
    return f"{reader.root} episode {episode}"


def check_actions(actions: object, source: str, field: str, dim: int = 7) -> np.ndarray:
    """Cast raw actions to float32 (T, ``dim``) or raise :class:`DatasetFormatError`.

    Real files store actions as float64 as often as float32; both are accepted. NaNs are not
    checked here: datamodules decide whether a NaN skips the episode/window or is an error.
    """
    try:
        array = np.asarray(actions)
    except Exception as err:
        raise DatasetFormatError(f"{source}: field '{field}' cannot be read as an array ({err})") from err
    if array.ndim != 2 or array.shape[1] != dim:
        raise DatasetFormatError(
            f"{source}: field '{field}' has shape {tuple(array.shape)}, expected (T, {dim})"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DatasetFormatError(f"{source}: field '{field}' has dtype {array.dtype}, expected a float type")
    return np.ascontiguousarray(array, dtype=np.float32)

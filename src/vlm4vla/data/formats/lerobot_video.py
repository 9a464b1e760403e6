"""Frames of LeRobot mp4 videos (AV1 / H.264) by timestamp, decoded with PyAV.

A :class:`VideoStream` keeps its container open and remembers where its decoder is: a frame
shortly ahead of the last one decoded continues decoding; any other is reached by seeking to the
preceding key frame and decoding forward. Decoding and colour conversion use one thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vlm4vla.data.formats.base import DatasetFormatError, one_line

#: Keep decoding (rather than seek) for a target at most this far past the last decoded frame.
CONTINUE_WINDOW_S = 2.0


def to_rgb(frame: Any) -> np.ndarray:
    """A decoded ``av.VideoFrame`` as uint8 (H, W, 3), converted on this thread only (as for the
    decoder: a scaler with a thread pool, kept by PyAV, hangs when freed in a forked child)."""
    try:
        return frame.to_ndarray(format="rgb24", threads=1)
    except TypeError:  # PyAV < 14 has no ``threads`` (and its scaler is single-threaded)
        return frame.to_ndarray(format="rgb24")


class VideoStream:
    """An open container and where its decoder currently is."""

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        try:
            self.container = av.open(str(path))
        except FileNotFoundError as err:
            raise DatasetFormatError(f"{path}: video file not found") from err
        except av.FFmpegError as err:
            raise DatasetFormatError(f"{path}: cannot open video ({one_line(err)})") from err
        if not self.container.streams.video:
            self.container.close()
            raise DatasetFormatError(f"{path}: no video stream")
        self.stream = self.container.streams.video[0]
        # One decoding thread: parallelism comes from DataLoader workers, and a decoder without
        # a thread pool can be freed safely in a forked child (freeing one with slice/frame
        # threads there waits forever for threads that were not forked).
        self.stream.codec_context.thread_count = 1
        self.frames: Iterator[Any] | None = None
        self.current: tuple[float, Any] | None = None  # (time, av.VideoFrame) last decoded

    def close(self) -> None:
        self.frames = None
        self.current = None
        self.container.close()

    def nearest(self, target: float, tolerance: float) -> tuple[float, Any]:
        """The first decoded ``(time, av.VideoFrame)`` at or after ``target - tolerance`` (the
        last frame if none is); the caller checks that it is within ``tolerance``."""
        current = self.current
        if current is None or abs(current[0] - target) > tolerance:
            if current is None or self.frames is None or not (current[0] < target <= current[0] + CONTINUE_WINDOW_S):
                self.seek(target, tolerance)
            current = self._decode_until(target, tolerance)
        return current

    def seek(self, target: float, tolerance: float) -> None:
        import av

        position = max(0, int((target - tolerance) / self.stream.time_base))
        try:
            self.container.seek(position, stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError as err:
            raise DatasetFormatError(f"{self.path}: cannot seek to {target:.4f}s ({one_line(err)})") from err
        self.frames = self.container.decode(self.stream)
        self.current = None

    def _decode_until(self, target: float, tolerance: float) -> tuple[float, Any]:
        import av

        last = self.current
        try:
            for frame in self.frames:
                if frame.pts is None:
                    continue
                time = float(frame.pts * self.stream.time_base)
                last = (time, frame)
                if time >= target - tolerance:
                    break
            else:
                self.frames = None
        except av.FFmpegError as err:
            self.frames = None
            self.current = None
            raise DatasetFormatError(f"{self.path}: cannot decode video ({one_line(err)})") from err
        if last is None:
            raise DatasetFormatError(f"{self.path}: no video frame at or after {target:.4f}s")
        self.current = last
        return last


__all__ = ["CONTINUE_WINDOW_S", "VideoStream", "to_rgb"]

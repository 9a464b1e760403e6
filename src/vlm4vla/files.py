"""Atomic file writes: readers see the old file or the new one, never a part of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Content = str | bytes | Callable[[BinaryIO], None]


def write_atomic(path: str | os.PathLike, content: Content, *, suffix: str = "") -> Path:
    """Replace ``path`` with ``content`` (text, bytes, or a function writing to a binary file).

    Written to a temporary file in the same directory, flushed to disk, then renamed over
    ``path``; on any error the temporary file is removed and ``path`` is untouched.
    ``suffix`` ends the temporary name (some writers, e.g. ``np.savez``, look at it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{suffix}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = ["write_atomic"]

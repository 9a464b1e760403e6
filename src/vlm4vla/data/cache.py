"""Where derived data (action index, statistics) is cached, and how it is keyed.

Caches live next to the data: ``<root>/vlm4vla_stats.json`` (statistics, human-readable) and
``<root>/vlm4vla_cache/*.npz`` (the raw actions of every episode, so that setup never
re-reads a whole dataset). If ``<root>`` is not writable, the same files go to
``$VLM4VLA_CACHE_DIR`` or ``$XDG_CACHE_HOME/vlm4vla`` (default ``~/.cache/vlm4vla``), in a
sub-directory named after a hash of the absolute data path. Entries are keyed by a
fingerprint of the data files (relative path, size, mtime), so edited data is re-indexed.
All writes are atomic (temporary file + rename): concurrent ranks can race harmlessly. An
explicit ``cache_dir`` is never replaced by another place: if it is not writable when a cache
must be written, that is an error (:class:`DatasetFormatError` naming it).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vlm4vla.data.formats.base import DatasetFormatError
from vlm4vla.files import write_atomic

STATS_FILENAME = "vlm4vla_stats.json"
CACHE_DIRNAME = "vlm4vla_cache"
_FINGERPRINT_SKIP = {STATS_FILENAME, CACHE_DIRNAME}


def user_cache_dir() -> Path:
    if env := os.environ.get("VLM4VLA_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlm4vla"


def _writable_dir(path: Path) -> bool:
    """Probe by writing: ``os.access`` is wrong for root and for read-only mounts."""
    if not path.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def cache_locations(root: str | Path, cache_dir: str | Path | None = None) -> list[Path]:
    """Directories searched for cache files, in order; the first writable one is written to.

    ``cache_dir`` (explicit) wins; then the data directory itself; then the user cache.
    """
    root = Path(root).resolve()
    data_dir = root if root.is_dir() else root.parent
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    places = [Path(cache_dir)] if cache_dir is not None else []
    places += [data_dir, user_cache_dir() / f"{root.name}-{digest}"]
    return places


def check_cache_dir(cache_dir: str | Path) -> Path:
    """An explicit cache directory, created if missing; one-line error if it cannot be written."""
    path = Path(cache_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetFormatError(
            f"{path}: cache directory (cache_dir / --cache-dir) cannot be created ({err.strerror or err})"
        ) from err
    if not _writable_dir(path):
        raise DatasetFormatError(f"{path}: cache directory (cache_dir / --cache-dir) is not writable")
    return path


def writable_location(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:  # asked for explicitly: never silently write elsewhere
        return check_cache_dir(cache_dir)
    for place in cache_locations(root, cache_dir):
        if _writable_dir(place):
            return place
        if not place.exists():
            try:
                place.mkdir(parents=True, exist_ok=True)
                return place
            except OSError:
                continue
    raise OSError(f"no writable cache directory for {root} (tried {cache_locations(root, cache_dir)})")


def fingerprint(paths: Iterable[Path], base: Path, extra: str = "") -> str:
    """Hash of (path relative to ``base``, size, mtime) of ``paths``, and of ``extra``."""
    digest = hashlib.sha1()
    for path in sorted(paths):
        st = path.stat()
        digest.update(f"{path.relative_to(base)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    if extra:
        digest.update(f"extra|{extra}\n".encode())
    return digest.hexdigest()[:16]


def directory_summary(directory: Path, suffix: str) -> str:
    """``count|total size|newest mtime`` of the files ending in ``suffix`` in ``directory``
    (not recursive): from ``os.scandir`` stats only, so it stays cheap for 10^5-10^6 frames."""
    count = total = newest = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(suffix) and entry.is_file():
                st = entry.stat()
                count += 1
                total += st.st_size
                newest = max(newest, st.st_mtime_ns)
    return f"{count}|{total}|{newest}"


def dataset_files(root: Path, *, skip_dirs: Iterable[str] = ()) -> list[Path]:
    """All regular files under ``root`` except caches and ``skip_dirs`` (e.g. ``videos``)."""
    if root.is_file():
        return [root]
    skip = _FINGERPRINT_SKIP | set(skip_dirs)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        out.extend(Path(dirpath) / f for f in filenames if f not in skip and not f.endswith(".tmp"))
    return out


# -- statistics JSON ---------------------------------------------------------------------------
def load_stats_entry(
    root: str | Path, key: str, cache_dir: str | Path | None = None
) -> dict[str, Any] | None:
    for place in cache_locations(root, cache_dir):
        path = place / STATS_FILENAME
        if path.is_file():
            try:
                entries = json.loads(path.read_text()).get("entries", {})
            except (OSError, json.JSONDecodeError):
                continue
            if key in entries:
                return entries[key]
    if cache_dir is not None:  # a miss will be computed then written there: fail before computing
        check_cache_dir(cache_dir)
    return None


def save_stats_entry(
    root: str | Path, key: str, entry: dict[str, Any], cache_dir: str | Path | None = None
) -> Path:
    path = writable_location(root, cache_dir) / STATS_FILENAME
    data: dict[str, Any] = {"version": 1, "entries": {}}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            data.setdefault("entries", {})
        except (OSError, json.JSONDecodeError):
            data = {"version": 1, "entries": {}}
    data["entries"][key] = entry
    payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    write_atomic(path, payload, suffix=".json")
    return path


# -- array caches ------------------------------------------------------------------------------
def load_arrays(
    root: str | Path, name: str, cache_dir: str | Path | None = None
) -> dict[str, np.ndarray] | None:
    for place in cache_locations(root, cache_dir):
        path = place / CACHE_DIRNAME / f"{name}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as npz:
                    return {k: npz[k] for k in npz.files}
            except (OSError, ValueError, EOFError):
                continue
    if cache_dir is not None:  # a miss will be computed then written there: fail before computing
        check_cache_dir(cache_dir)
    return None


def save_arrays(
    root: str | Path, name: str, arrays: dict[str, np.ndarray], cache_dir: str | Path | None = None
) -> Path:
    path = writable_location(root, cache_dir) / CACHE_DIRNAME / f"{name}.npz"
    write_atomic(path, lambda fh: np.savez(fh, **arrays), suffix=".npz")
    return path


__all__ = [
    "CACHE_DIRNAME",
    "STATS_FILENAME",
    "cache_locations",
    "check_cache_dir",
    "dataset_files",
    "directory_summary",
    "fingerprint",
    "load_arrays",
    "load_stats_entry",
    "save_arrays",
    "save_stats_entry",
    "user_cache_dir",
    "writable_location",
]

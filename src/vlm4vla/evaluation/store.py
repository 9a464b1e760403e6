"""Crash-safe results store: ``OUT/<checkpoint>/<mode>/episodes.jsonl``.

* One flat JSON record per finished episode, appended, flushed and fsync'ed as it finishes, so
  a crash, Ctrl-C or ``kill`` loses at most the episodes still running.
* Re-running the same command skips the episodes already in the file: nothing is lost and
  nothing is duplicated. A last line cut short by a kill is ignored and cut off the file
  before new records are appended; a damaged line elsewhere is an error (never rewritten).
* ``meta.json`` beside it records the settings that change outcomes (suite, protocol, seed, max
  steps, chunk size, the evaluator's ``settings()``, the simulator versions, the per-bundle
  inputs); resuming with a different or unrecorded value is refused, naming it, instead of
  mixing incompatible episodes.
* Summaries are written atomically (`vlm4vla.files.write_atomic`: temp file + fsync + rename).
* One run at a time per output directory: `ResultsLock` holds an OS lock (``flock``) on
  ``OUT/.vlm4vla-eval.lock`` for the whole run; a second run is refused, naming the holder.
  The OS drops the lock when the holder exits, however it exits, so a stale file never blocks.
* Sharded runs (`vlm4vla.evaluation.distributed`): rank R appends to its own shard file,
  ``episodes.jsonl`` for rank 0 and ``episodes.rank<R>.jsonl`` otherwise, and holds the lock
  ``.vlm4vla-eval.lock`` / ``.vlm4vla-eval.rank<R>.lock``. A cell's episodes are the union of its
  shard files, whatever world size wrote them; a launch with another world size than one still
  running on the same OUT is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vlm4vla.evaluation.plugin import EvaluationError
from vlm4vla.files import write_atomic

EPISODES_NAME = "episodes.jsonl"
META_NAME = "meta.json"
LOCK_NAME = ".vlm4vla-eval.lock"
LAUNCH_LOCK_NAME = ".vlm4vla-eval.launch.lock"
_SHARD = re.compile(r"^episodes(?:\.rank(\d+))?\.jsonl$")
_LOCK = re.compile(r"^\.vlm4vla-eval(?:\.rank(\d+))?\.lock$")
_WORLD = re.compile(r", rank (\d+) of (\d+)$")


def shard_name(rank: int) -> str:
    """The episodes file rank ``rank`` appends to (rank 0 keeps the single-process name)."""
    return EPISODES_NAME if rank == 0 else f"episodes.rank{rank}.jsonl"


def lock_name(rank: int) -> str:
    return LOCK_NAME if rank == 0 else f".vlm4vla-eval.rank{rank}.lock"


def shard_files(directory: str | os.PathLike) -> list[Path]:
    """A cell's shard files, by rank."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1) or 0), p) for p in directory.iterdir() if (m := _SHARD.match(p.name))]
    return [p for _, p in sorted(found)]


class StoreError(EvaluationError):
    """The output directory cannot be used (unwritable, damaged, or produced with other settings)."""


def episode_key(task: Any, episode_id: Any) -> tuple[str, str]:
    return (str(task), json.dumps(episode_id, sort_keys=True))


def ensure_writable(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and prove a file can be written in it (one clear error if not)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise StoreError(f"output directory {directory} is not writable ({reason})") from None
    return directory


class ResultsLock:
    """An exclusive, non-blocking ``flock`` on ``OUT/.vlm4vla-eval.lock`` while a run writes to OUT.

    Two runs appending to the same ``episodes.jsonl`` would each run every missing episode
    (duplicates), and one's tail repair could cut the other's line in half. The file holds the
    holder's pid, host and start time, for the refusal message; it is never deleted (deleting a
    locked file lets a third run lock a new inode while the first still runs).

    Rank ``rank`` of a sharded launch locks its own file (`lock_name`). While holding the short
    launch lock it also checks the other ranks' locks: one held by a launch of another world size
    is refused (its shards are split differently, so both would run the same episodes).
    """

    def __init__(self, directory: str | os.PathLike, *, rank: int = 0, world_size: int = 1) -> None:
        self.directory = Path(directory)
        self.path = self.directory / lock_name(rank)
        self.rank = rank
        self.world_size = world_size
        self._fd: int | None = None

    def acquire(self) -> ResultsLock:
        launch_fd = self._open(self.directory / LAUNCH_LOCK_NAME)
        try:
            fcntl.flock(launch_fd, fcntl.LOCK_EX)  # held for a few milliseconds by each starting rank
            self._check_world_sizes()
            fd = self._open(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_holder(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise StoreError(
                        f"{self.directory} is in use by another vlm4vla-eval run ({holder}); "
                        "wait for it to finish or use another --out"
                    ) from None
                raise StoreError(f"{self.path}: cannot lock the results directory ({err.strerror})") from None
            info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
            if self.world_size > 1:
                info += f", rank {self.rank} of {self.world_size}"
            os.ftruncate(fd, 0)
            os.pwrite(fd, (info + "\n").encode(), 0)
            self._fd = fd
        finally:
            fcntl.flock(launch_fd, fcntl.LOCK_UN)
            os.close(launch_fd)
        return self

    def _open(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(f"{path}: cannot open the results lock ({err.strerror})") from None

    def _check_world_sizes(self) -> None:
        for path in sorted(self.directory.iterdir()):
            match = _LOCK.match(path.name)
            if not match or path == self.path:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError as err:
                    if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                        raise
                    holder = _read_holder(fd)
                    found = _WORLD.search(holder)
                    world = int(found.group(2)) if found else 1
                    if world != self.world_size:
                        raise StoreError(
                            f"{self.directory} is being written by a launch of world size {world} ({holder}); "
                            f"this one has world size {self.world_size}: wait for it to finish (a finished "
                            "launch's episodes are kept whatever the world size) or use another --out"
                        ) from None
                else:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ResultsLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    # The holder writes its line just after locking: an empty file means it is starting up.
    return text.splitlines()[0] if text else "holder details not written yet"


class CellStore:
    """Episodes of one (checkpoint, mode) cell; this process appends to its rank's shard file."""

    def __init__(self, directory: str | os.PathLike, meta: Mapping[str, Any], *, rank: int = 0) -> None:
        self.directory = Path(directory)
        self.path = self.directory / shard_name(rank)
        self.meta = dict(meta)
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        self._loaded = False

    # ---------------------------------------------------------------- reading
    def load(self, *, repair: bool = True) -> dict[tuple[str, str], dict[str, Any]]:
        """Finished episodes by (task, episode id), from every shard file (by rank; an episode
        found twice keeps its first record). A truncated last line is ignored; with ``repair``
        it is cut off this rank's own file (another rank's file is its owner's to repair).
        Settings that differ from ``meta.json`` are refused."""
        self._check_meta()
        self._records = {}
        for path in shard_files(self.directory):
            self._read(path, repair=repair and path == self.path)
        self._loaded = True
        return dict(self._records)

    def _read(self, path: Path, *, repair: bool) -> None:
        raw = path.read_bytes()
        good_end = 0
        offset = 0
        for line_no, line in enumerate(raw.split(b"\n"), start=1):
            end = offset + len(line) + 1
            complete = end <= len(raw)
            offset = end
            if not line.strip():
                if complete:
                    good_end = end
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "task" not in record or "episode_id" not in record:
                    raise ValueError("not an episode record")
            except ValueError:
                if not complete:
                    break  # the tail of a killed write: ignore (and repair below)
                raise StoreError(f"{path}:{line_no}: damaged record; move the file away to re-run this cell") from None
            self._records.setdefault(episode_key(record["task"], record["episode_id"]), record)
            good_end = min(end, len(raw))
        if repair and good_end < len(raw):
            with open(path, "r+b") as f:
                f.truncate(good_end)
                if good_end and not raw[:good_end].endswith(b"\n"):
                    f.seek(good_end)
                    f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        elif repair and raw and not raw.endswith(b"\n"):
            with open(path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())

    def _check_meta(self) -> None:
        meta_path = self.directory / META_NAME
        if not meta_path.is_file():
            return
        try:
            stored = json.loads(meta_path.read_text())
        except ValueError:
            raise StoreError(f"{meta_path}: damaged; move the cell directory away to re-run it") from None
        # Compared as JSON values (tuples are lists once stored).
        wanted, have = _flatten(json.loads(json.dumps(self.meta))), _flatten(stored)
        missing = [k for k in wanted if k not in have]
        if missing:
            raise StoreError(
                f"{meta_path} does not record {', '.join(missing)} (written by an older vlm4vla or by hand), so "
                "its episodes may come from other settings; use another --out"
            )
        diff = [k for k in wanted if have[k] != wanted[k]]
        if diff:
            details = ", ".join(f"{k} {have[k]!r} → {wanted[k]!r}" for k in diff)
            raise StoreError(
                f"{self.directory} holds results produced with other settings ({details}); "
                "use another --out or the original settings"
            )

    def records(self) -> list[dict[str, Any]]:
        if not self._loaded:
            self.load(repair=False)
        return list(self._records.values())

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._records.values())

    # ---------------------------------------------------------------- writing
    def append(self, record: Mapping[str, Any]) -> None:
        """Append one finished episode durably (write + flush + fsync). Duplicates are ignored."""
        key = episode_key(record["task"], record["episode_id"])
        if key in self._records:
            return
        line = json.dumps(dict(record), sort_keys=True, allow_nan=True) + "\n"
        if not (self.directory / META_NAME).exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            meta_path = self.directory / META_NAME
            if not meta_path.exists():
                write_atomic(meta_path, json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        with open(self.path, "ab") as f:
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        self._records[key] = dict(record)


def _flatten(meta: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"settings": {"camera_size": 256}}`` → ``{"settings.camera_size": 256}``: a refusal names the setting."""
    flat: dict[str, Any] = {}
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def cell_directory(out: str | os.PathLike, checkpoint: str, mode: str) -> Path:
    return Path(out) / checkpoint / mode

"""Per-process cache of open file handles for the readers.

A reader is built in the main process and then forked (or pickled) into DataLoader workers.
Handles opened by the parent must not be used by a child (shared file offsets, HDF5 and Arrow
state), so a :class:`HandleCache` remembers the pid that filled it: in another process it
starts empty and reopens lazily, and pickling it keeps only its settings.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from operator import methodcaller
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
H = TypeVar("H")

#: Closes handles that have a ``close()`` method (h5py, pyarrow, PyAV containers).
CLOSE_METHOD = methodcaller("close")


class HandleCache(Generic[K, H]):
    """Handles of this process by key, least recently used first.

    Args:
        max_open: keep at most this many (the least recently used is closed); None: no limit.
        close: how to release a handle (``os.close`` for descriptors); None for cached values
            that hold no resource. Must be picklable (a builtin or a ``methodcaller``).
    """

    def __init__(self, max_open: int | None = None, close: Callable[[H], Any] | None = CLOSE_METHOD) -> None:
        self.max_open = max_open
        self._close = close
        self._handles: OrderedDict[K, H] = OrderedDict()
        self._pid = os.getpid()

    def _local(self) -> OrderedDict[K, H]:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use or close
            self._handles = OrderedDict()
            self._pid = os.getpid()
        return self._handles

    def get(self, key: K, open: Callable[[K], H]) -> H:
        """The handle of ``key``, opened with ``open(key)`` if this process has none."""
        handles = self._local()
        handle = handles.get(key)
        if handle is not None:
            handles.move_to_end(key)
            return handle
        handle = open(key)
        handles[key] = handle
        while self.max_open is not None and len(handles) > self.max_open:
            self._release(handles.popitem(last=False)[1])
        return handle

    def _release(self, handle: H) -> None:
        if self._close is not None:
            self._close(handle)

    def close(self) -> None:
        """Release this process's handles (a later :meth:`get` reopens)."""
        if self._pid == os.getpid():
            for handle in self._handles.values():
                self._release(handle)
        self._handles = OrderedDict()

    def __len__(self) -> int:
        return len(self._local())

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown ``os`` may be gone
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open, "_close": self._close}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._handles = OrderedDict()
        self._pid = os.getpid()


__all__ = ["CLOSE_METHOD", "HandleCache"]

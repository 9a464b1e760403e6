"""The registry of on-disk episode formats.

A format module defines an :class:`EpisodeFormat` subclass decorated with
``@register_format(name)``: how to recognise the format on disk and how to open its reader.
Every module of this package is imported on the first lookup, so a built-in format
registers itself by existing; formats defined elsewhere register when their module is imported.
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vlm4vla.data.formats.base import EpisodeReader
from vlm4vla.registry import Registry

F = TypeVar("F", bound="type[EpisodeFormat]")


class EpisodeFormat(abc.ABC):
    """How to find and open one on-disk episode format (one instance per format)."""

    #: Set by :func:`register_format`.
    name: str = ""
    #: What :meth:`detect` looks for, shown when no format is found (``"meta/info.json"``).
    looks_for: str = ""
    #: Whether :meth:`open` accepts an ``instruction_key`` (formats with an instruction feature).
    accepts_instruction_key: bool = False

    @abc.abstractmethod
    def detect(self, root: Path) -> bool:
        """Whether ``root`` (an existing file or directory) holds a dataset in this format."""

    @abc.abstractmethod
    def open(
        self,
        root: Path,
        *,
        split: str = "train",
        image_key: str | None = None,
        action_key: str | None = None,
        instruction_key: str | None = None,
    ) -> EpisodeReader:
        """The reader of an on-disk ``split``; ``None`` keys take the format's defaults."""

    def data_root(self, root: Path) -> Path:
        """The file or directory the reader reads below ``root`` (its files key the caches)."""
        return root

    def has_split(self, root: Path, split: str) -> bool:
        """Whether ``root`` holds a separate on-disk ``split`` besides ``"train"``."""
        return False

    def not_found_hint(self, root: Path) -> str:
        """Appended to the "no dataset found" error (e.g. where a dataset is, one level down)."""
        return ""


FORMATS: Registry[EpisodeFormat] = Registry("dataset format")
_builtins_loaded = False


def register_format(name: str) -> Callable[[F], F]:
    """Class decorator: register one instance of an :class:`EpisodeFormat` subclass as ``name``."""

    def decorate(cls: F) -> F:
        if not (isinstance(cls, type) and issubclass(cls, EpisodeFormat)):
            raise TypeError(f"@register_format({name!r}) must decorate an EpisodeFormat subclass, got {cls!r}")
        cls.name = name
        FORMATS.register(name, cls())
        return cls

    return decorate


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        package = importlib.import_module("vlm4vla.data.formats")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _builtins_loaded = True


def get_format(name: str) -> EpisodeFormat:
    """The registered format ``name`` (an unknown name lists the known ones)."""
    _load_builtins()
    return FORMATS.get(name)


def episode_formats() -> tuple[str, ...]:
    """Names of every registered episode format, sorted."""
    _load_builtins()
    return tuple(FORMATS.names())


__all__ = ["FORMATS", "EpisodeFormat", "episode_formats", "get_format", "register_format"]

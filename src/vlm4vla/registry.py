"""A small name → object registry shared by backbones, presets and evaluators."""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

from vlm4vla.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError):
    """An unknown registry name; the message lists the valid names."""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.kind} {name!r} is already registered to {self._items[name]!r}")
        self._items[name] = item
        return item

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; valid {self.kind} names: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

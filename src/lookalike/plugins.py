"""The one open registry the pluggable parts share (backbones, index backends, garment
detectors): name -> entry. Each part's ``registry.py`` keeps one and its registration
decorator; adding a part is one file plus one registration."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name; a later registration of a name replaces the earlier one."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {self.names()}") from None

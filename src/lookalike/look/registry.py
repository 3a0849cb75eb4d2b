"""The garment-detector registry: name -> :class:`Detector` factory. Detector files register
themselves here; the package's ``__init__`` imports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class DetectorEntry:
    """``factory(settings) -> detector`` (an object with ``find(picture) -> Look | None``)."""

    name: str
    factory: Callable[..., Any]
    description: str


_DETECTORS: dict[str, DetectorEntry] = {}


def register_detector(name: str, description: str):
    """Decorator: register ``factory`` under ``name`` (replacing an earlier one of that name)."""
    def wrap(factory):
        _DETECTORS[name] = DetectorEntry(name, factory, description)
        return factory
    return wrap


def detector_names() -> list[str]:
    return sorted(_DETECTORS)


def make_detector(name: str, settings):
    try:
        entry = _DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown garment detector {name!r}; registered: "
                         f"{detector_names()}") from None
    return entry.factory(settings)

"""The garment-detector registry: name -> :class:`Detector` factory. Detector files register
themselves here; the package's ``__init__`` imports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lookalike.plugins import Registry


@dataclass(frozen=True)
class DetectorEntry:
    """``factory(settings) -> detector`` (an object with ``find(picture) -> Look | None``)."""

    name: str
    factory: Callable[..., Any]
    description: str


_DETECTORS: Registry[DetectorEntry] = Registry("garment detector")
detector_names = _DETECTORS.names


def register_detector(name: str, description: str):
    """Decorator: register ``factory`` under ``name`` (replacing an earlier one of that name)."""
    def wrap(factory):
        _DETECTORS.add(name, DetectorEntry(name, factory, description))
        return factory
    return wrap


def make_detector(name: str, settings):
    """The detector ``name`` made from the look settings (``LookSettings.as_limits()``)."""
    return _DETECTORS.get(name).factory(settings)

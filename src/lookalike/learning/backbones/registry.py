"""The backbone registry: name -> :class:`Backbone`. Backbone files register themselves here;
the package's ``__init__`` imports them (see its docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Backbone:
    """A feature extractor: ``builder(input_shape, width, settings) -> keras.Model`` (2-D out)."""

    name: str
    builder: Callable[..., Any]
    description: str


_BACKBONES: dict[str, Backbone] = {}


def register_backbone(name: str, description: str):
    """Decorator: register ``builder`` under ``name`` (replacing an earlier one of that name)."""
    def wrap(builder):
        _BACKBONES[name] = Backbone(name, builder, description)
        return builder
    return wrap


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def get_backbone(name: str) -> Backbone:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; registered: {backbone_names()}") from None

"""The backbone registry: name -> :class:`Backbone`. Backbone files register themselves here;
the package's ``__init__`` imports them (see its docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lookalike.plugins import Registry


@dataclass(frozen=True)
class Backbone:
    """A feature extractor: ``builder(input_shape, width, settings) -> keras.Model`` (2-D out)."""

    name: str
    builder: Callable[..., Any]
    description: str


_BACKBONES: Registry[Backbone] = Registry("backbone")
backbone_names = _BACKBONES.names
get_backbone = _BACKBONES.get


def register_backbone(name: str, description: str):
    """Decorator: register ``builder`` under ``name`` (replacing an earlier one of that name)."""
    def wrap(builder):
        _BACKBONES.add(name, Backbone(name, builder, description))
        return builder
    return wrap

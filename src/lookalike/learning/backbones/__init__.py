"""The open registry of backbones: name -> :class:`Backbone` (a feature extractor builder).

A backbone is one file in this folder defining a builder ``(input_shape, width, settings) ->
keras.Model`` (model input -> 2-D features) decorated with :func:`register_backbone`, plus its
import at the bottom of this file. ``model.backbone`` in the settings accepts any registered
name. Builders import TensorFlow inside, so the registry is cheap to import (settings use it).
"""

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


# Built-in backbones: importing a module registers it.
from lookalike.learning.backbones import (  # noqa: E402,F401
    compact_cnn,
    efficientnet_lite,
    keras_applications,
)

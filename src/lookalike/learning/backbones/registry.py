"""The backbone registry: name -> :class:`Backbone`. Backbone files register themselves here;
the package's ``__init__`` imports them (see its docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lookalike.plugins import Registry


@dataclass(frozen=True)
class Backbone:
    """A feature extractor: ``builder(input_shape, width, settings) -> keras.Model`` (2-D out).

    ``channels``: the ``image.channels`` it takes; ``pretrained``: whether it loads
    ``model.pretrained_weights`` (False: the settings refuse weights it would ignore; None, a
    backbone that does not say: not checked).
    """

    name: str
    builder: Callable[..., Any]
    description: str
    channels: tuple[int, ...] = (1, 3)
    pretrained: bool | None = None


_BACKBONES: Registry[Backbone] = Registry("backbone")
backbone_names = _BACKBONES.names
get_backbone = _BACKBONES.get


def register_backbone(name: str, description: str, channels: tuple[int, ...] = (1, 3),
                      pretrained: bool | None = None):
    """Decorator: register ``builder`` under ``name`` (replacing an earlier one of that name)."""
    def wrap(builder):
        _BACKBONES.add(name, Backbone(name, builder, description, tuple(channels), pretrained))
        return builder
    return wrap

"""The open registry of backbones: name -> :class:`Backbone` (a feature extractor builder).

A backbone is one file in this folder defining a builder ``(input_shape, width, settings) ->
keras.Model`` (model input -> 2-D features) decorated with
:func:`~lookalike.learning.backbones.registry.register_backbone`, plus its import at the bottom
of this file. ``model.backbone`` in the settings accepts any registered name. Builders import
TensorFlow inside, and settings only in annotations, so the registry is cheap to import and
the settings can use it.
"""

from __future__ import annotations

from lookalike.learning.backbones.registry import (  # noqa: F401
    Backbone,
    backbone_names,
    get_backbone,
    register_backbone,
)

# Built-in backbones: importing a module registers it.
from lookalike.learning.backbones import (  # noqa: E402,F401
    compact_cnn,
    efficientnet_lite,
    keras_applications,
)

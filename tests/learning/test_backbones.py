"""Adding a backbone is one file plus one registration; settings accept it by name.

The builder below is that one file's content; ``@register_backbone`` is the registration (a
built-in backbone is instead imported at the bottom of ``lookalike/learning/backbones``).
"""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.config import ConfigError, load_settings
from lookalike.learning.backbones import backbone_names, get_backbone, register_backbone
from lookalike.learning.model import build_model


@register_backbone("tiny_mlp", "two dense layers on flattened pixels (test backbone)")
def tiny_mlp(input_shape, width, settings):
    import tensorflow as tf

    inputs = tf.keras.Input(shape=input_shape)
    x = tf.keras.layers.Flatten()(inputs)
    x = tf.keras.layers.Dense(width, activation="relu")(x)
    return tf.keras.Model(inputs, x, name="tiny_mlp")


def test_registered_backbone_is_configurable_and_builds():
    assert "tiny_mlp" in backbone_names() and get_backbone("tiny_mlp").builder is tiny_mlp
    settings = load_settings(overrides={"model": {"backbone": "tiny_mlp", "width": 16,
                                                  "embedding_size": 8}})
    model = build_model(settings)
    assert any(layer.name == "tiny_mlp" for layer in model.layers)
    out = model(np.zeros((2, 28, 28, 1), np.float32)).numpy()
    assert out.shape == (2, 8)


def test_settings_refuse_an_unregistered_backbone():
    with pytest.raises(ConfigError, match="model.backbone.*unknown backbone 'resnet9000'"):
        load_settings(overrides={"model": {"backbone": "resnet9000"}})

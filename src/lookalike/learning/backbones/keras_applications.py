"""keras.applications backbones (EfficientNetB0, MobileNetV2) for RGB photos; with
``model.pretrained_weights: imagenet`` where Google's storage is reachable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookalike.learning.backbones.registry import register_backbone

if TYPE_CHECKING:  # annotations only: the settings import this registry
    from lookalike.config import Settings


def _applications_backbone(kind: str):
    def build(input_shape: tuple[int, int, int], width: int, settings: Settings):
        import tensorflow as tf

        layers = tf.keras.layers
        size, _, channels = input_shape
        weights = settings.model.pretrained_weights
        if weights and channels != 3:
            raise ValueError(f"{kind} with pretrained weights needs image.channels = 3")
        inputs = tf.keras.Input(shape=input_shape)
        x = inputs
        # keras.applications refuse inputs smaller than 32x32 (Fashion-MNIST is 28x28).
        target = max(size, 32)
        if target != size:
            x = layers.Resizing(target, target, name="resize_min")(x)
        if kind == "efficientnet_b0":
            # Our preprocessing yields [0, 1]; keras.applications EfficientNet contains its own
            # Rescaling/Normalization and expects raw 0-255 pixels, so scale back up here
            # (explicitly, once) rather than feeding [0, 1] into a 0-255 network.
            x = layers.Rescaling(255.0, name="to_0_255")(x)
            net = tf.keras.applications.EfficientNetB0(
                include_top=False, weights=weights, input_shape=(target, target, channels),
                pooling="avg")
        else:
            # MobileNetV2's preprocess_input maps 0-255 to [-1, 1]; from [0, 1] that is 2x - 1.
            x = layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(x)
            net = tf.keras.applications.MobileNetV2(
                include_top=False, weights=weights, input_shape=(target, target, channels),
                pooling="avg")
        x = net(x)
        return tf.keras.Model(inputs, x, name=kind)
    return build


register_backbone("efficientnet_b0", "keras.applications EfficientNetB0 (RGB photos)",
                  pretrained=True)(
    _applications_backbone("efficientnet_b0"))
register_backbone("mobilenet_v2", "keras.applications MobileNetV2 (RGB photos)",
                  pretrained=True)(
    _applications_backbone("mobilenet_v2"))

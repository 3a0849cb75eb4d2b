"""A small VGG-style CNN: the default for Fashion-MNIST-sized grey images."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookalike.learning.backbones.registry import register_backbone

if TYPE_CHECKING:  # annotations only: the settings import this registry
    from lookalike.config import Settings

# Moving statistics settle within ~50 steps (Keras' 0.99 needs ~500): short runs (tests,
# tuning trials) then embed well at inference too; long runs are unaffected.
_BN_MOMENTUM = 0.9


@register_backbone("compact_cnn", "VGG-style CNN with BatchNorm for small (e.g. 28x28 grey) images",
                   pretrained=False)
def _compact_cnn(input_shape: tuple[int, int, int], width: int, settings: Settings):
    """Three blocks of 2 x (conv3x3 -> BN -> ReLU) + pooling, widths w, 2w, 4w; 8w features.

    Global average *and* max pooling of the last block are concatenated: average pooling keeps
    shape statistics, max pooling keeps small distinctive details (buckles, logos); both help
    retrieval more than a flatten on tiny images, with far fewer parameters.
    """
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=input_shape)
    x = inputs
    for block, filters in enumerate((width, width * 2, width * 4)):
        for conv in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        if block < 2:
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    avg = layers.GlobalAveragePooling2D(name="gap")(x)
    mx = layers.GlobalMaxPooling2D(name="gmp")(x)
    x = layers.Concatenate(name="pooled")([avg, mx])
    return tf.keras.Model(inputs, x, name="compact_cnn")

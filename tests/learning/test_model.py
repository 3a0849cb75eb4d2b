"""lookalike.model: backbones, the exported SavedModel contract, reload fidelity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike.config import load_settings
from lookalike.learning.backbones import backbone_names
from lookalike.learning.model import (
    backbone_of,
    build_model,
    embedding_network,
    load_embedding_model,
    save_embedding_model,
)


@pytest.fixture(scope="module")
def tiny():
    return load_settings(overrides={"model": {"width": 4, "embedding_size": 16}})


def images(n: int, size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)


def test_compact_cnn_outputs_unit_vectors_of_embedding_size(tiny):
    model = build_model(tiny)
    out = model(images(5), training=False).numpy()
    assert out.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert type(model).__name__ == "SimilarityModel"
    assert model.layers[-1].__class__.__name__ == "MetricEmbedding"


def test_augmentation_only_when_enabled_and_identity_at_inference(tiny):
    plain = build_model(tiny)
    assert not [layer for layer in plain.layers if layer.name.startswith("aug_")]
    augmented = build_model(tiny.replace(model={"augmentation": True}))
    names = [layer.name for layer in augmented.layers]
    assert "aug_flip" in names and "aug_shift" in names
    x = images(3)
    np.testing.assert_allclose(augmented(x, training=False), augmented(x, training=False))


@pytest.mark.parametrize("backbone,scale", [("efficientnet_b0", 255.0), ("mobilenet_v2", 2.0)])
def test_applications_backbones_rescale_unit_inputs_explicitly(tiny, backbone, scale):
    settings = tiny.replace(model={"backbone": backbone}, image={"channels": 3})
    model = build_model(settings)
    out = model(images(2, channels=3), training=False)
    assert out.shape == (2, 16)
    inner = [layer for layer in model.layers if layer.name == backbone][0]
    rescales = [layer for layer in inner.layers if layer.__class__.__name__ == "Rescaling"
                and layer.name.startswith("to_")]
    assert len(rescales) == 1 and rescales[0].scale == scale
    # keras.applications need >= 32 px: 28 px Fashion-MNIST inputs are resized inside.
    assert any(layer.name == "resize_min" for layer in inner.layers)


def test_registry_lists_all_configurable_backbones():
    assert {"compact_cnn", "efficientnet_b0", "mobilenet_v2"} <= set(backbone_names())


def test_served_vector_is_the_pooled_features_or_the_head(tiny):
    """embedding_from=features serves the backbone's pooled features (8 x width for
    compact_cnn), L2-normalised; head serves the MetricEmbedding output the loss sees."""
    model = build_model(tiny)
    x = images(6, seed=2)
    features = embedding_network(model, tiny)(x, training=False).numpy()
    pooled = backbone_of(model)(x, training=False).numpy()
    assert features.shape == (6, 8 * tiny.model.width)
    np.testing.assert_allclose(features, pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
                               atol=1e-5)
    head = tiny.replace(model={"embedding_from": "head"})
    np.testing.assert_allclose(embedding_network(model, head)(x, training=False),
                               model(x, training=False), atol=1e-6)
    # The projection is a hidden layer of the training head only.
    assert model.get_layer("projection").units == tiny.model.projection_size
    bare = build_model(tiny.replace(model={"projection_size": 0}))
    assert "projection" not in [layer.name for layer in bare.layers]


def test_saved_model_reloads_and_embeds_identically(tiny, tmp_path):
    model = embedding_network(build_model(tiny), tiny)
    x = images(37, seed=3)
    expected = model.predict(x, verbose=0)
    dim = 8 * tiny.model.width
    info = {"categories": ["a", "b"], "distance": "cosine", "backbone": "compact_cnn",
            "products_table": "/t", "products_version": 3, "training_run_id": "r1"}
    save_embedding_model(model, tmp_path / "m", info)
    written = json.loads((tmp_path / "m" / "lookalike.json").read_text())
    assert written["image_size"] == 28 and written["channels"] == 1
    assert written["embedding_size"] == dim and written["products_version"] == 3

    loaded = load_embedding_model(tmp_path / "m")
    got = loaded.embed(x, batch_size=8)  # several batches, last one partial
    assert got.dtype == np.float32 and got.shape == (37, dim)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert loaded.info["categories"] == ["a", "b"] and loaded.embedding_size == dim
    assert loaded.embed(np.zeros((0, 28, 28, 1), np.float32)).shape == (0, dim)
    with pytest.raises(ValueError, match="shape"):
        loaded.embed(images(2, size=32))


def test_the_saved_model_holds_the_serving_function_and_weights_only(tiny, tmp_path):
    """Not a traced copy of every Keras layer's call: that made EfficientNet-Lite0's export
    take ~10 s instead of ~2 s, and every load and TFLite conversion read it back."""
    import tensorflow as tf

    model = embedding_network(build_model(tiny), tiny)
    save_embedding_model(model, tmp_path / "m", {})
    raw = tf.saved_model.load(str(tmp_path / "m" / "saved_model"))
    assert not hasattr(raw, "net") and list(raw.signatures) == ["serving_default"]
    assert len(raw.weights) == len(model.variables)
    assert not (tmp_path / "m" / "saved_model" / "keras_metadata.pb").exists()


def test_load_rejects_folder_without_info(tmp_path):
    with pytest.raises(FileNotFoundError, match="lookalike.json"):
        load_embedding_model(tmp_path)


def test_augmentation_fills_shifted_space_with_the_white_background(tiny):
    """Shifts uncover the catalogue's background (white), never black."""
    import tensorflow as tf

    settings = tiny.replace(model={"augmentation": True})
    model = build_model(settings)
    shift = model.get_layer("aug_shift")
    tf.keras.utils.set_random_seed(1)
    white = np.ones((8, 28, 28, 1), np.float32)
    shifted = shift(white, training=True).numpy()
    assert shifted.min() > 0.99  # a black fill would show as zeros at the borders


def test_random_resized_crops_change_the_aspect_zoom_alone_does_not(tiny):
    """model.augmentation_crop: each side is cropped independently (the product's aspect
    changes); augmentation_zoom alone scales both sides alike."""
    import tensorflow as tf

    x = np.ones((32, 56, 56, 1), np.float32)
    x[:, 14:42, 14:42] = 0.0                     # a dark square product on white

    def sides(model_settings):
        layer = build_model(tiny.replace(model=model_settings)).get_layer("aug_zoom")
        tf.keras.utils.set_random_seed(5)
        dark = layer(x, training=True).numpy()[..., 0] < 0.5
        return dark.any(axis=2).sum(axis=1), dark.any(axis=1).sum(axis=1)  # height, width

    height, width = sides({"augmentation": True, "augmentation_zoom": 0.3})
    assert np.abs(height / width - 1).max() < 0.1
    height, width = sides({"augmentation": True, "augmentation_zoom": 0.1,
                           "augmentation_crop": 0.4})
    aspect = height / width
    assert np.abs(aspect - 1).max() > 0.2 and aspect.min() < 1 < aspect.max()
    # A crop keeps 60-100 % of a side, so the 28 px square grows to at most 28 / 0.6 px; the
    # zoom out shrinks it to no less than 28 / 1.1.
    both = np.concatenate([height, width])
    assert 28 / 1.1 - 1 <= both.min() and both.max() <= 28 / 0.6 + 1 and both.max() > 33


def test_colour_augmentation_keeps_pixels_in_unit_range(tiny):
    """RandomContrast stretches around the mean: inputs over 1.0 (issue 21) unless clipped."""
    import tensorflow as tf

    settings = tiny.replace(model={"augmentation": True, "augmentation_colour": 0.5})
    model = build_model(settings)
    colour = tf.keras.Sequential([model.get_layer("aug_brightness"),
                                  model.get_layer("aug_contrast"), model.get_layer("aug_clip")])
    tf.keras.utils.set_random_seed(3)
    x = np.zeros((16, 28, 28, 1), np.float32)
    x[:, :, 14:] = 1.0  # half black, half white: the stretch pushes both ends out
    out = colour(x, training=True).numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0
    # What the clip is there for: a stretch (factor >= 1) leaves the unit range.
    stretch = tf.keras.layers.RandomContrast((0.0, 0.5))(x, training=True).numpy()
    assert stretch.max() > 1.0 or stretch.min() < 0.0


def test_proxy_term_is_added_to_the_multi_similarity_loss_and_trains_its_proxies(tiny):
    """model.proxy_weight adds weight x cross-entropy of scale x cosine(embedding, proxy) to
    the Multi-Similarity loss (issue 21: never replacing it); the proxies live in the model
    and a training step moves them."""
    import tensorflow as tf
    from tensorflow_similarity.losses import MultiSimilarityLoss

    from lookalike.learning.model import PROXIES_LAYER, compile_model, make_loss

    settings = tiny.replace(model={"proxy_weight": 0.5, "proxy_scale": 8.0})
    with pytest.raises(ValueError, match="number of classes"):
        build_model(settings)
    model = build_model(settings, num_classes=3)
    assert model.get_layer(PROXIES_LAYER).proxies.shape == (3, 16)
    with pytest.raises(ValueError, match="class proxies"):
        make_loss(settings)
    x, y = images(6, seed=5), np.array([0, 0, 1, 1, 2, 2], np.int32)
    embeddings = model(x, training=False)
    proxies = model.get_layer(PROXIES_LAYER).proxies.numpy()
    m = tiny.model
    multi = MultiSimilarityLoss(distance=m.distance, alpha=m.loss_alpha, beta=m.loss_beta,
                                epsilon=m.loss_epsilon, lmda=m.loss_lambda)
    logits = 8.0 * (embeddings.numpy() @ (proxies / np.linalg.norm(proxies, axis=1,
                                                                  keepdims=True)).T)
    logits -= logits.max(axis=1, keepdims=True)
    cross_entropy = -(logits[np.arange(6), y] - np.log(np.exp(logits).sum(axis=1)))
    expected = float(np.mean(multi.call(tf.constant(y), embeddings).numpy().ravel()
                             + 0.5 * cross_entropy))
    loss = make_loss(settings, model)
    assert loss.call(tf.constant(y), embeddings).shape == (6,)   # per example, no broadcast
    got = float(loss(tf.constant(y), embeddings))
    assert got == pytest.approx(expected, rel=1e-4)
    assert got > float(multi(tf.constant(y), embeddings))
    # Off (the default): the Multi-Similarity loss itself, and no proxies in the model.
    assert type(make_loss(tiny)).__name__ == "MultiSimilarityLoss"
    assert PROXIES_LAYER not in [layer.name for layer in build_model(tiny).layers]

    compile_model(model, settings, tf.keras.optimizers.legacy.Adam(0.01))
    model.fit(x, y, epochs=1, batch_size=6, verbose=0)
    assert not np.allclose(model.get_layer(PROXIES_LAYER).proxies.numpy(), proxies)


def test_test_time_flip_serves_the_mean_of_image_and_mirror_image(tiny, tmp_path):
    """model.test_time_flip: the served vector is the unit mean of the vectors of the image and
    its mirror image, in the exported SavedModel and its TFLite conversion alike."""
    model = build_model(tiny)
    plain = embedding_network(model, tiny)
    flipped = embedding_network(model, tiny.replace(model={"test_time_flip": True}))
    x = images(5, seed=7)
    expected = plain.predict(x, verbose=0) + plain.predict(x[:, :, ::-1].copy(), verbose=0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = flipped.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(flipped.predict(x[:, :, ::-1].copy(), verbose=0), got, atol=1e-5)
    assert not np.allclose(plain.predict(x, verbose=0), got, atol=1e-3)
    save_embedding_model(flipped, tmp_path / "m", {"categories": []})
    for engine in ("tensorflow", "tflite"):
        loaded = load_embedding_model(tmp_path / "m", engine=engine)
        assert loaded.engine == engine
        np.testing.assert_allclose(loaded.embed(x, batch_size=8), got, atol=1e-4)

"""The embedding network: backbone -> MetricEmbedding head, trained with Multi-Similarity loss.

Public, stable API (used by training, embedding and serving):

* :func:`build_model` -- a ``tensorflow_similarity`` ``SimilarityModel`` for the settings.
* :func:`embedding_network` -- its served part (images -> unit vectors).
* :func:`save_embedding_model` -- write a TF SavedModel of the embedding function plus
  ``lookalike.json`` (everything a consumer needs to preprocess inputs and read outputs).
* :func:`load_embedding_model` -- load that folder back as an :class:`EmbeddingModel`.

Input contract: float32 ``[batch, size, size, channels]`` in [0, 1], exactly what
:func:`lookalike.preprocessing.batch_to_model_input` produces. The model never rescales
[0, 1] inputs again, except where a ``keras.applications`` backbone documents a different
input range (see :func:`_applications_backbone`). Embeddings are unit vectors (cosine
similarity == dot product): the backbone's pooled features or the MetricEmbedding head's output,
as ``model.embedding_from`` says (:func:`embedding_network`).

Backbones come from the open registry :mod:`lookalike.learning.backbones`.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import numpy as np

from lookalike.config import Settings
from lookalike.config.settings import EMBEDDING_FROM  # noqa: F401 (the served vectors)

INFO_FILE = "lookalike.json"
SAVED_MODEL_DIR = "saved_model"
# The same weights exported under training.precision's mixed policy, for GPU batch embedding.
MIXED_MODEL_DIR = "saved_model_mixed"
FORMAT_VERSION = 1
FEATURES_LAYER = "features"
# What model.embedding_from may name (see embedding_network).


def build_model(settings: Settings, num_classes: int | None = None):
    """The (uncompiled) ``SimilarityModel`` for ``settings``.

    ``num_classes`` (the number of label ids) is needed only with ``model.proxy_weight`` > 0:
    the class proxies of the loss's softmax term live in the model (:func:`class_proxies`), so
    they are trained, checkpointed and restored with it. Compile with :func:`compile_model`.
    """
    import tensorflow as tf
    from tensorflow_similarity.layers import MetricEmbedding
    from tensorflow_similarity.models import SimilarityModel

    from lookalike.learning.backbones import get_backbone

    backbone = get_backbone(settings.model.backbone)
    shape = (settings.image.size, settings.image.size, settings.image.channels)
    inputs = tf.keras.Input(shape=shape, dtype=tf.float32, name="images")
    x = inputs
    if settings.model.augmentation:
        # Active only when training=True; identity in the exported embedding function.
        x = tf.keras.layers.RandomFlip("horizontal", name="aug_flip")(x)
        # What a shift uncovers is filled with the catalogue's background: white (inputs are
        # in [0, 1], photos and Fashion-MNIST alike are dark products on white), never black.
        x = tf.keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant",
                                              fill_value=1.0, name="aug_shift")(x)
        zoom, colour = settings.model.augmentation_zoom, settings.model.augmentation_colour
        crop = settings.model.augmentation_crop
        if zoom or crop:
            # Zoom in (Keras: a negative factor) crops, up to max(zoom, crop) of each side;
            # zoom out puts a smaller product on more background. With crop the sides vary
            # independently: a random resized crop, whose aspect changes too.
            factor = (-max(zoom, crop), zoom)
            x = tf.keras.layers.RandomZoom(factor, factor if crop else None, fill_mode="constant",
                                           fill_value=1.0, name="aug_zoom")(x)
        if colour:
            x = tf.keras.layers.RandomBrightness(colour, value_range=(0.0, 1.0),
                                                 name="aug_brightness")(x)
            x = tf.keras.layers.RandomContrast(colour, name="aug_contrast")(x)
            # Contrast stretches around the mean and leaves [0, 1]; the pixels every backbone
            # was built for (and serving sends) stay in it.
            x = tf.keras.layers.ReLU(max_value=1.0, name="aug_clip")(x)
    features = backbone.builder(shape, settings.model.width, settings)(x)
    # A named identity: what embedding_network serves when model.embedding_from is "features".
    x = tf.keras.layers.Activation("linear", name=FEATURES_LAYER)(features)
    if settings.model.projection_size:
        # The training head's hidden layer: what the loss squeezes into class clusters is the
        # projection, which leaves the features below it more general (SimCLR's finding).
        x = tf.keras.layers.Dense(settings.model.projection_size, use_bias=False,
                                  name="projection")(x)
        x = tf.keras.layers.BatchNormalization(momentum=0.9, name="projection_bn")(x)
        x = tf.keras.layers.Activation("relu", name="projection_relu")(x)
    # float32 output under any precision policy: the loss's similarities need the range.
    outputs = MetricEmbedding(settings.model.embedding_size, dtype="float32",
                              name="metric_embedding")(x)
    if settings.model.proxy_weight > 0:
        if not num_classes:
            raise ValueError("model.proxy_weight > 0 needs the number of classes")
        outputs = class_proxies(int(num_classes), dtype="float32", name=PROXIES_LAYER)(outputs)
    return SimilarityModel(inputs, outputs, name="lookalike")


PROXIES_LAYER = "class_proxies"


def class_proxies(num_classes: int, **kwargs):
    """A ``ClassProxies`` layer: identity on the embedding that owns one learned proxy vector
    per class, the weights of the loss's softmax term (:func:`make_loss`). Kept in the model so
    the optimizer trains them and checkpoints hold them; not part of the served network."""
    import tensorflow as tf

    class ClassProxies(tf.keras.layers.Layer):
        def __init__(self, num_classes: int, **kwargs):
            super().__init__(**kwargs)
            self.num_classes = num_classes

        def build(self, input_shape):
            self.proxies = self.add_weight(
                name="proxies", shape=(self.num_classes, int(input_shape[-1])),
                initializer=tf.keras.initializers.RandomNormal(stddev=1.0, seed=0),
                trainable=True)

        def call(self, inputs):
            return inputs

        def get_config(self):
            return {**super().get_config(), "num_classes": self.num_classes}

    return ClassProxies(num_classes, **kwargs)


def embedding_network(model, settings: Settings):
    """The served part of a :func:`build_model` model: images -> unit vectors.

    ``model.embedding_from``: ``features`` serves the backbone's pooled features, the
    projection and MetricEmbedding head only shape them through the loss during training;
    ``head`` serves the MetricEmbedding output (``model.embedding_size`` wide). Training, tuning
    trials and the exported SavedModel all embed through this one function.
    """
    import tensorflow as tf

    if settings.model.embedding_from == "head":
        served = model.get_layer("metric_embedding").output  # already L2-normalised
    else:
        served = tf.keras.layers.UnitNormalization(dtype="float32", name="features_l2")(
            model.get_layer(FEATURES_LAYER).output)
    name = f"{model.name}_{settings.model.embedding_from}"
    network = tf.keras.Model(model.inputs, served, name=name)
    if not settings.model.test_time_flip:
        return network
    # Flip test-time augmentation: the unit mean of the image's and its mirror image's vectors.
    images = tf.keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype=tf.float32,
                            name="images")
    mirrored = tf.keras.layers.Lambda(lambda x: tf.reverse(x, axis=[2]), name="mirror")(images)
    both = tf.keras.layers.Add(dtype="float32", name="flip_sum")(
        [network(images), network(mirrored)])
    served = tf.keras.layers.UnitNormalization(dtype="float32", name="flip_l2")(both)
    return tf.keras.Model(images, served, name=f"{name}_flip")


@contextlib.contextmanager
def precision_policy(name: str):
    """Layers built inside use Keras precision policy ``name`` (``mixed_float16``: float16
    compute, float32 weights; Keras then scales the loss). The global policy is restored, so
    what is built afterwards (the exported float32 model) is not affected."""
    import tensorflow as tf

    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def set_backbone_trainable(model, trainable: bool, freeze_batchnorm: bool,
                           depth: float = 1.0) -> None:
    """Freeze or unfreeze the backbone (recompile afterwards). With ``freeze_batchnorm`` its
    BatchNorm layers stay frozen, which in TF 2 also runs them in inference mode: pretrained
    statistics survive small, few-class batches. ``depth`` < 1 unfreezes only the top share
    of the backbone (:func:`frozen_below`): the layers below keep their pretrained weights."""
    import tensorflow as tf

    net = backbone_of(model)
    net.trainable = trainable
    if not trainable:
        return
    leaves = [layer for layer in _sublayers(net) if not getattr(layer, "layers", None)]
    for layer in leaves[:frozen_below(leaves, depth)]:
        layer.trainable = False
    if freeze_batchnorm:
        for layer in leaves:
            if isinstance(layer, tf.keras.layers.BatchNormalization):
                layer.trainable = False


def frozen_below(leaves: list, depth: float) -> int:
    """How many of the backbone's layers (input to output) stay frozen so that the top
    ``depth`` share of its weight layers (convolutions, dense; BatchNorm not counted) trains:
    0 for depth 1. Counting weight layers, not parameters, keeps the cut where the network's
    depth is; the cheap-to-train late stages hold most of the parameters."""
    import tensorflow as tf

    weighted = [i for i, layer in enumerate(leaves) if layer.weights
                and not isinstance(layer, tf.keras.layers.BatchNormalization)]
    keep = max(1, round(len(weighted) * depth))  # any depth > 0 trains at least one layer
    return 0 if keep >= len(weighted) else weighted[-keep]


def backbone_of(model):
    """The backbone inside a :func:`build_model` model: its one nested Keras model (the other
    layers are the input, augmentation and the MetricEmbedding head)."""
    import tensorflow as tf

    nested = [layer for layer in model.layers if isinstance(layer, tf.keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"expected one backbone model inside {model.name}, found {len(nested)}")
    return nested[0]


def blended_weights(start: list, trained: list, share: float) -> list:
    """Weight-space ensemble (WiSE-FT): ``start + share x (trained - start)``, weight by weight.

    Fine-tuning on a few hundred photos sharpens the categories but forgets some of what made
    the pretrained features good beyond rank 1; a point on the line between the two keeps some
    of both, at no cost when serving."""
    return [before + share * (after - before) for before, after in zip(start, trained)]


def _sublayers(layer):
    for child in getattr(layer, "layers", []):
        yield child
        yield from _sublayers(child)


def make_loss(settings: Settings, model=None):
    """The Multi-Similarity loss, plus ``model.proxy_weight`` x the normalised-softmax term over
    ``model``'s class proxies when that weight is > 0 (added to it, never replacing it)."""
    import tensorflow as tf
    from tensorflow_similarity.losses import MultiSimilarityLoss

    m = settings.model
    multi_similarity = MultiSimilarityLoss(distance=m.distance, alpha=m.loss_alpha,
                                           beta=m.loss_beta, epsilon=m.loss_epsilon,
                                           lmda=m.loss_lambda)
    if m.proxy_weight <= 0:
        return multi_similarity
    if model is None:
        raise ValueError("model.proxy_weight > 0: the loss needs the model's class proxies")
    proxies = model.get_layer(PROXIES_LAYER).proxies

    class MultiSimilarityWithProxies(tf.keras.losses.Loss):
        """Per example: Multi-Similarity + weight x cross-entropy of scale x cosine(embedding,
        class proxies). The proxy term pulls every class together around one point, which
        the pair-based term alone does only within a batch."""

        def call(self, y_true, y_pred):
            labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
            embeddings = tf.cast(y_pred, tf.float32)
            logits = m.proxy_scale * tf.matmul(tf.math.l2_normalize(embeddings, axis=1),
                                               tf.math.l2_normalize(proxies, axis=1),
                                               transpose_b=True)
            softmax = tf.keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                      from_logits=True)
            # The Multi-Similarity call gives [m, 1]; per example both are [m].
            pairs = tf.reshape(multi_similarity.call(y_true, y_pred), [-1])
            return pairs + m.proxy_weight * softmax

        def get_config(self):
            return {**super().get_config(), **multi_similarity.get_config(),
                    "proxy_weight": m.proxy_weight, "proxy_scale": m.proxy_scale}

    return MultiSimilarityWithProxies(name="multi_similarity_with_proxies")


def compile_model(model, settings: Settings, optimizer) -> None:
    """Compile with the loss of :func:`make_loss`. ``optimizer`` is used as given (Horovod
    passes its DistributedOptimizer here, so that very object applies the averaged
    gradients)."""
    model.compile(optimizer=optimizer, loss=make_loss(settings, model),
                  distance=settings.model.distance)


# --------------------------------------------------------------------------- save / load


def save_embedding_model(model, directory: str | Path, info: dict, mixed_model=None) -> Path:
    """Write ``model`` (images -> vectors: an :func:`embedding_network`) as
    ``directory/saved_model`` (TF SavedModel, signature ``serving_default``:
    ``images`` float32 [None, size, size, channels] -> ``embedding`` float32 [None, dim]) and
    ``directory/lookalike.json`` (``info`` completed with the model's geometry).

    ``info`` should carry: image_size, channels, distance, backbone, categories (sorted list;
    label id i is categories[i]), products_table, products_version, training_run_id.
    ``mixed_model`` (the same weights built under a mixed precision policy) is also exported,
    to ``saved_model_mixed``, with the same signature (float32 in and out).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    input_shape = tuple(model.inputs[0].shape[1:])
    embedding_size = int(model.outputs[0].shape[-1])
    _export(model, directory / SAVED_MODEL_DIR)
    full = dict(info)
    if mixed_model is not None:
        _export(mixed_model, directory / MIXED_MODEL_DIR)
        full["mixed_precision"] = mixed_model.dtype_policy.name
    full.update(format_version=FORMAT_VERSION, image_size=int(input_shape[0]),
                channels=int(input_shape[2]), embedding_size=embedding_size,
                input="float32 [n, image_size, image_size, channels] in [0, 1] "
                      "(lookalike.preprocessing.batch_to_model_input)",
                output="float32 [n, embedding_size], L2-normalised")
    full.setdefault("categories", [])
    (directory / INFO_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=str),
                                       encoding="utf-8")
    return directory


def _export(model, path: Path) -> None:
    """One SavedModel: float32 images -> L2-normalised float32 embeddings."""
    import tensorflow as tf

    input_shape = tuple(model.inputs[0].shape[1:])
    keras_model = tf.keras.Model(model.inputs, model.outputs)

    class _Exported(tf.Module):
        def __init__(self, net):
            super().__init__()
            # The weights are saved; the Keras model itself is not tracked, so the SavedModel
            # holds the one serving function and not a traced copy of every layer's call
            # (Keras's own format, which nothing here loads). EfficientNet-Lite0 at 64 px:
            # export 9.5 -> 1.7 s, load and embed 3.5 -> 0.7 s, TFLite conversion 4.5 -> 1.5 s,
            # outputs unchanged (docs/benchmarks-history.md, "make test in 15 minutes").
            self.weights = list(net.variables)
            object.__setattr__(self, "net", net)

        @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.float32,
                                                    name="images")])
        def embed(self, images):
            vectors = self.net(images, training=False)
            # embedding_network already L2-normalises; normalising again is a no-op safeguard
            # that makes "cosine distance == 1 - dot product" part of the exported contract.
            return {"embedding": tf.math.l2_normalize(tf.cast(vectors, tf.float32), axis=1)}

    module = _Exported(keras_model)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.embed})


class EmbeddingModel:
    """A loaded embedding SavedModel: ``.info`` (lookalike.json) and ``.embed(images)``.

    ``engine``: ``tensorflow`` (batch jobs, GPUs) or ``tflite`` (the REST server: small batches
    on CPU, see :mod:`lookalike.learning.engines`; falls back to TensorFlow if conversion fails).
    With ``tflite`` the SavedModel itself is loaded only when a batch larger than the TFLite
    path's needs it (about 3.5 s for EfficientNet-Lite0, and its memory).
    ``precision="mixed"`` loads the mixed-precision export (``embedding.precision``, GPUs).
    """

    def __init__(self, directory: str | Path, engine: str = "tensorflow", threads: int = 1,
                 precision: str = "float32"):
        from lookalike.learning.engines import CONVERTED_FILE, ENGINES, tflite_or_none

        if engine not in ENGINES:
            raise ValueError(f"unknown inference engine {engine!r}; choose one of {ENGINES}")
        self.directory = Path(directory)
        info_path = self.directory / INFO_FILE
        if not info_path.exists():
            raise FileNotFoundError(f"{info_path} not found: not a Lookalike embedding model")
        self.info: dict = json.loads(info_path.read_text(encoding="utf-8"))
        saved = SAVED_MODEL_DIR
        if precision == "mixed":
            if not self.info.get("mixed_precision"):
                raise ValueError(f"{self.directory} has no mixed-precision export: train with "
                                 "training.precision=mixed_float16 (or mixed_bfloat16), or "
                                 "embed with embedding.precision=float32")
            saved, engine = MIXED_MODEL_DIR, "tensorflow"
        elif precision != "float32":
            raise ValueError(f"unknown precision {precision!r}; use float32 or mixed")
        self._saved_model = self.directory / saved
        self._signature = None
        self._signature_lock = threading.Lock()
        self._tflite = (tflite_or_none(self._saved_model, threads,
                                       self.directory / CONVERTED_FILE)
                        if engine == "tflite" else None)
        if self._tflite is None:
            self._serving_signature()

    def _serving_signature(self):
        """The SavedModel's serving function, loaded on first use."""
        with self._signature_lock:
            if self._signature is None:
                import tensorflow as tf

                loaded = tf.saved_model.load(str(self._saved_model))
                self._signature = (loaded, loaded.signatures["serving_default"])
        return self._signature[1]

    @property
    def engine(self) -> str:
        return "tflite" if self._tflite is not None else "tensorflow"

    @property
    def converted(self) -> bytes | None:
        """The TensorFlow Lite model in use (``engine == "tflite"``), else None."""
        return None if self._tflite is None else self._tflite.model_content

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def channels(self) -> int:
        return int(self.info["channels"])

    @property
    def embedding_size(self) -> int:
        return int(self.info["embedding_size"])

    @property
    def categories(self) -> list[str]:
        return list(self.info.get("categories", []))

    def embed(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Embed float32 images [n, size, size, channels] in [0, 1] -> float32 [n, dim]."""
        import tensorflow as tf

        images = np.asarray(images, dtype=np.float32)
        expected = (self.image_size, self.image_size, self.channels)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"expected images of shape [n, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}], got {images.shape}")
        if len(images) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        if self._tflite is not None and len(images) <= batch_size:
            return self._tflite.embed(np.ascontiguousarray(images))
        out, serve = [], self._serving_signature()
        for start in range(0, len(images), max(1, int(batch_size))):
            chunk = tf.constant(images[start:start + batch_size])
            out.append(serve(images=chunk)["embedding"].numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


def load_embedding_model(directory: str | Path, engine: str = "tensorflow",
                         threads: int = 1, precision: str = "float32") -> EmbeddingModel:
    """Load a folder written by :func:`save_embedding_model` (e.g. the downloaded MLflow
    artifact ``embedding_model/`` of a training run)."""
    return EmbeddingModel(directory, engine, threads, precision)


def configure_threads(intra: int | None = None, inter: int | None = None) -> None:
    """Limit TensorFlow's thread pools (call before TF runs anything); None = leave default."""
    import tensorflow as tf

    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra))
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter))
    except RuntimeError:
        # TF was already initialised in this process: the pools cannot change any more.
        pass


def gpu_memory_growth() -> list:
    """Let TensorFlow take GPU memory as it needs it instead of all of it at start, so several
    processes (Spark embedding workers, Horovod ranks) can share a GPU; the GPUs seen (none on
    a CPU machine: nothing to do). Call before TensorFlow runs anything."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # this process already initialised its GPUs
    return gpus


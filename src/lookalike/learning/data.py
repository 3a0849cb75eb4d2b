"""Products in Delta -> model-ready data for training, tuning and evaluation.

Images travel **encoded** (their stored JPEG/PNG bytes) and are decoded where a batch is
formed, with the one preprocessing function (:func:`lookalike.preprocessing.to_model_input`):
no float32 copy of a catalogue exists anywhere. Two paths, chosen by ``training.data_path``
(``auto``: memory when the train split's image bytes are at most
``training.max_in_memory_bytes``):

* **memory**: each split's image bytes are streamed from Delta (one partition at a time) into
  ``LOOKALIKE_HOME/cache/arrays/<key>`` (key = table + Delta version + split), read as
  memory-mapped :class:`~lookalike.learning.encoded.EncodedImages`. Trainers, Horovod ranks and
  Hyperopt trials share these files, so nothing re-reads Delta. Batches come from
  tensorflow-similarity's class-balanced ``MultiShotMemorySampler``, whose ``load_example_fn``
  decodes each sampled row; a rank's shard whose decoded size is at most
  ``training.max_decoded_bytes`` is decoded once instead (small catalogues train faster).
* **petastorm**: (image bytes, label) of the train split are materialised once with
  ``petastorm.spark.make_spark_converter`` (parquet cache under ``LOOKALIKE_HOME/petastorm``) and
  streamed with ``make_tf_dataset(cur_shard=rank, shard_count=size)``; images are decoded in
  tf.data and class-balanced batches formed by :func:`balanced_batches`.

Labels are integer ids into the **sorted list of every category** in the products table at the
version read (:attr:`DataSpec.categories`); that list is stored with the model. When photos of
one product share a ``group_id`` (``training.label``: ``auto`` or ``group``), the metric-learning
label is the product instead (:func:`product_keys`; ids into :attr:`DataSpec.labels`): the model
learns "same product" rather than only "same category".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lookalike.config import Settings
from lookalike.console import library_output
from lookalike.learning.encoded import EncodedImages, take, write_encoded

# Bumped when the cache's layout changes, so an old cache is never read as a new one.
_CACHE_FORMAT = "encoded-1"


@dataclass(frozen=True)
class DataSpec:
    """Picklable description of the training data (shipped to Horovod ranks and trials)."""

    mode: str                              # "memory" | "petastorm"
    categories: tuple[str, ...]            # sorted; label id i <-> categories[i]
    train_label_ids: tuple[int, ...]       # the classes training sees
    products_table: str
    products_version: int
    num_rows: int
    image_shape: tuple[int, int, int]
    arrays_dir: str | None = None          # memory: EncodedImages files + labels.npy
    petastorm_cache_dir: str | None = None
    petastorm_file_urls: tuple[str, ...] = field(default_factory=tuple)
    label_column: str = "category"         # "category" | "group" (the product, by group_id)
    labels: tuple[str, ...] = ()           # group labels: product key of label id i

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DataSpec":
        data = dict(data)
        for key in ("categories", "train_label_ids", "image_shape", "petastorm_file_urls",
                    "labels"):
            data[key] = tuple(data[key] or ())
        return cls(**data)


@dataclass
class SplitArrays:
    """One split: ``x`` its images (:class:`EncodedImages`, decoded by batch, or for small
    in-memory data a float32 [n, size, size, channels] array), ``labels`` category names."""

    x: EncodedImages | np.ndarray
    labels: np.ndarray
    product_ids: np.ndarray
    groups: np.ndarray | None = None       # group_id per row ("" = none), None = no column

    def label_ids(self, categories: Sequence[str]) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(categories)}
        return np.array([lookup[c] for c in self.labels], dtype=np.int32)

    def subset(self, mask: np.ndarray) -> "SplitArrays":
        groups = None if self.groups is None else self.groups[mask]
        return SplitArrays(take(self.x, mask), self.labels[mask], self.product_ids[mask], groups)

    @property
    def has_groups(self) -> bool:
        return self.groups is not None and bool(np.any(self.groups != ""))

    def __len__(self) -> int:
        return len(self.x)


# --------------------------------------------------------------------------- Spark side


def list_categories(spark, settings: Settings, version: int | None = None
                    ) -> tuple[tuple[str, ...], int]:
    """Sorted distinct categories over every split of the products table, and the version."""
    from lookalike.catalogue.tables import read_products

    frame, version = read_products(spark, settings, None, version)
    rows = frame.select("category").distinct().collect()
    return tuple(sorted(r["category"] for r in rows)), version


def split_dir(settings: Settings, split: str, version: int) -> Path:
    """Cache folder of one split's encoded images: keyed by table, Delta version and split
    (the bytes do not depend on the model's input size)."""
    from lookalike.catalogue.tables import catalogue_table

    raw = json.dumps([_CACHE_FORMAT, str(catalogue_table(settings, "products")), int(version),
                      split])
    return settings.home_path / "cache" / "arrays" / hashlib.sha256(raw.encode()).hexdigest()[:20]


def load_split(spark, settings: Settings, split: str, version: int) -> SplitArrays:
    """The whole ``split`` at ``version`` (``"all"``: every split, e.g. for cross-validation),
    cached under LOOKALIKE_HOME as encoded images.

    The bytes stream to disk one Spark partition at a time (``toLocalIterator``): the driver
    never holds the split, encoded or decoded.
    """
    from lookalike.catalogue.tables import group_column, read_products

    directory = split_dir(settings, split, version)
    if not (directory / "done").exists():
        frame, _ = read_products(spark, settings, None if split == "all" else (split,), version)
        rows = frame.select("product_id", "category", group_column(frame),
                            "image").toLocalIterator()
        tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
        columns = write_encoded(tmp, rows, order_key="product_id")
        none = np.zeros(0, dtype=str)
        np.save(tmp / "labels.npy", columns.get("category", none))
        np.save(tmp / "product_ids.npy", columns.get("product_id", none))
        np.save(tmp / "groups.npy", columns.get("group_id", none))
        (tmp / "done").write_text("ok")
        try:
            tmp.rename(directory)
        except OSError:  # another process cached it first
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return read_split_dir(directory, settings.image.size, settings.image.channels)


def read_split_dir(directory: str | Path, size: int, channels: int) -> SplitArrays:
    """A cached split, its images decoded at ``size`` x ``size`` x ``channels`` when indexed."""
    directory = Path(directory)
    return SplitArrays(EncodedImages(directory, size, channels),
                       np.load(directory / "labels.npy"),
                       np.load(directory / "product_ids.npy"),
                       np.load(groups) if (groups := directory / "groups.npy").exists() else None)


def product_keys(split: SplitArrays) -> np.ndarray:
    """The product each row shows: its group_id, or its own product_id when it has none."""
    if split.groups is None:
        return split.product_ids
    return np.where(split.groups != "", split.groups, split.product_ids)


def training_labels(split: SplitArrays, spec: "DataSpec") -> np.ndarray:
    """int32 metric-learning label ids of every row: categories, or products (group labels)."""
    if spec.label_column == "category":
        return split.label_ids(spec.categories)
    lookup = {key: i for i, key in enumerate(spec.labels)}
    return np.array([lookup.get(key, -1) for key in product_keys(split)], dtype=np.int32)


def label_count(spec: "DataSpec") -> int:
    """How many label ids training can see: products with group labels, else categories."""
    return len(spec.labels) if spec.label_column == "group" else len(spec.categories)


def resolve_train_categories(settings: Settings, categories: Sequence[str]) -> tuple[str, ...]:
    """Categories used for training: ``training.train_categories`` or all of them."""
    wanted = settings.training.train_categories
    if not wanted:
        return tuple(categories)
    unknown = sorted(set(wanted) - set(categories))
    if unknown:
        raise ValueError(f"training.train_categories names unknown categories {unknown}; "
                         f"known: {list(categories)}")
    return tuple(c for c in categories if c in set(wanted))


def choose_mode(settings: Settings, image_bytes: int) -> str:
    """memory (local memory-mapped files) or petastorm, by the train split's encoded bytes."""
    mode = settings.training.data_path
    if mode == "auto":
        return "memory" if image_bytes <= settings.training.max_in_memory_bytes else "petastorm"
    return mode


def prepare_training_data(spark, settings: Settings, version: int | None = None,
                          mode: str | None = None) -> DataSpec:
    """Materialise the train split (memory arrays or a Petastorm cache) and describe it."""
    from pyspark.sql import functions as F

    from lookalike.catalogue.tables import catalogue_table, group_column, read_products

    categories, version = list_categories(spark, settings, version)
    train_categories = resolve_train_categories(settings, categories)
    if len(train_categories) < 2:
        raise ValueError("metric learning needs at least 2 training categories")
    label_ids = tuple(categories.index(c) for c in train_categories)
    frame, _ = read_products(spark, settings, ("train",), version)
    frame = frame.where(F.col("category").isin(list(train_categories)))
    totals = frame.agg(F.count("*").alias("rows"), F.sum(F.length("image")).alias("bytes"),
                       F.count(group_column(frame)).alias("grouped")).first()
    num_rows = int(totals["rows"])
    mode = mode or choose_mode(settings, int(totals["bytes"] or 0))
    label_column = settings.training.label
    if label_column == "auto":
        label_column = "group" if totals["grouped"] else "category"
    labels: tuple[str, ...] = ()
    if label_column == "group":
        keys = frame.select(_product_key(frame).alias("key")).distinct().collect()
        labels = tuple(sorted(r["key"] for r in keys))
    shape = (settings.image.size, settings.image.size, settings.image.channels)
    common = dict(categories=categories, train_label_ids=label_ids,
                  products_table=str(catalogue_table(settings, "products")),
                  products_version=int(version), num_rows=int(num_rows), image_shape=shape,
                  label_column=label_column, labels=labels)
    if mode == "memory":
        load_split(spark, settings, "train", version)
        directory = split_dir(settings, "train", version)
        return DataSpec(mode="memory", arrays_dir=str(directory), **common)
    if mode != "petastorm":
        raise ValueError(f"unknown data path {mode!r}")
    vocabulary = labels if label_column == "group" else categories
    converter = petastorm_converter(spark, settings, frame, label_column, vocabulary)
    return DataSpec(mode="petastorm", petastorm_cache_dir=converter.cache_dir_url,
                    petastorm_file_urls=tuple(converter.file_urls), **common)


def _product_key(frame):
    """Spark column: the product a row shows (group_id, else its own product_id)."""
    from pyspark.sql import functions as F

    from lookalike.catalogue.tables import group_column

    group = group_column(frame)
    return F.when(group.isNotNull() & (group != ""), group).otherwise(F.col("product_id"))


def petastorm_converter(spark, settings: Settings, frame, label_column: str,
                        vocabulary: Sequence[str]):
    """Materialise (encoded image, label id) of the train rows ``frame`` with Petastorm's Spark
    converter; label ids index ``vocabulary`` (categories, or product keys for group labels)."""
    from petastorm.spark import SparkDatasetConverter, make_spark_converter
    from pyspark.sql import functions as F

    cache = settings.home_path / "petastorm"
    cache.mkdir(parents=True, exist_ok=True)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache.as_uri())
    key = F.col("category") if label_column == "category" else _product_key(frame)
    ids = spark.createDataFrame(list(enumerate(vocabulary)), "label INT, key STRING")
    # Only the small (label, key) table moves: broadcast, so the image bytes are not shuffled.
    frame = (frame.select("image", key.alias("key")).join(F.broadcast(ids), "key")
             .select("image", "label"))
    # Petastorm shards by parquet row group: several files so every Horovod rank gets data.
    frame = frame.repartition(max(4, 2 * settings.training.processes))
    return make_spark_converter(frame, parquet_row_group_size_bytes=4 * 1024 * 1024)


# --------------------------------------------------------------------------- trainer side


def shard_rows(n: int, rank: int, size: int, seed: int) -> np.ndarray:
    """Row indices of ``rank``'s shard: a seeded permutation split into ``size`` parts."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[rank::size])


def memory_arrays(spec: DataSpec, rank: int = 0, size: int = 1, seed: int = 0
                  ) -> tuple[EncodedImages, np.ndarray]:
    """``rank``'s shard of the training rows as (images decoded on demand, int32 label ids)."""
    height, _, channels = spec.image_shape
    split = read_split_dir(spec.arrays_dir, height, channels)
    keep = np.flatnonzero(np.isin(split.label_ids(spec.categories),
                                  np.array(spec.train_label_ids)))
    rows = keep[shard_rows(len(keep), rank, size, seed)]
    return split.x.take(rows), training_labels(split, spec)[rows]


def decoded_bytes(images: EncodedImages) -> int:
    """Bytes of ``images`` decoded as float32 model input."""
    n, height, width, channels = images.shape
    return int(n) * height * width * channels * 4


def memory_sampler(spec: DataSpec, settings: Settings, rank: int = 0, size: int = 1):
    """Class-balanced ``MultiShotMemorySampler`` over ``rank``'s shard (rank-dependent seed)."""
    import random

    from tensorflow_similarity.samplers import MultiShotMemorySampler

    t = settings.training
    images, y = memory_arrays(spec, rank, size, t.seed)
    # The sampler draws with Python's `random`; a per-rank seed gives each rank its own batches.
    random.seed(t.seed * 1000 + rank)
    classes = sorted(set(int(v) for v in y))
    if decoded_bytes(images) <= t.max_decoded_bytes:
        # A small shard (Fashion-MNIST: 169 MB) is decoded once: no decoding in every step.
        x, load = images[:], (lambda example: example)
    else:
        # The sampler holds row numbers; each sampled row is decoded when its batch is formed.
        x, load = np.arange(len(images)), images.__getitem__
    # Its constructor print()s a banner ("The initial batch size is ..."): to the log file.
    with library_output() as stream, contextlib.redirect_stdout(stream):
        return MultiShotMemorySampler(
            x, y, load_example_fn=load,
            classes_per_batch=min(t.classes_per_batch, len(classes)),
            examples_per_class_per_batch=t.examples_per_class, steps_per_epoch=t.steps_per_epoch,
            # warmup=0: its default (-1) counts as a warm-up, and its end is a bare print()
            # ("Warmup complete") on the terminal after the first epoch.
            class_list=classes, warmup=0)


def balanced_batches(dataset, image_shape: Sequence[int], classes_per_batch: int,
                     examples_per_class: int, shuffle_buffer: int = 2048, seed: int | None = None):
    """Turn a stream of (image, label) into class-balanced batches in tf.data.

    Examples are grouped by label into groups of ``examples_per_class`` (``group_by_window``);
    ``classes_per_batch`` groups form a batch of ``classes_per_batch * examples_per_class``
    examples, so every class present contributes a whole number of groups (>= 2 positives
    each, what pair-based losses need).
    """
    import tensorflow as tf

    e = int(examples_per_class)
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    dataset = dataset.group_by_window(
        key_func=lambda x, y: tf.cast(y, tf.int64),
        reduce_func=lambda key, window: window.batch(e, drop_remainder=True),
        window_size=e)
    dataset = dataset.shuffle(4 * classes_per_batch, seed=seed)
    dataset = dataset.batch(classes_per_batch, drop_remainder=True)
    shape = [int(s) for s in image_shape]
    return dataset.map(lambda x, y: (tf.reshape(x, [-1, *shape]), tf.reshape(y, [-1])),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def batch_classes(spec: DataSpec, settings: Settings) -> int:
    """Classes per streamed batch: ``training.classes_per_batch``, at most the classes training
    sees (more groups than classes would only repeat classes, at the memory of a larger
    batch; the memory path's sampler caps it the same way)."""
    return min(settings.training.classes_per_batch, len(spec.train_label_ids))


@contextlib.contextmanager
def petastorm_dataset(spec: DataSpec, settings: Settings, rank: int = 0, size: int = 1):
    """Context manager: class-balanced tf.data batches streamed from ``rank``'s Petastorm shard."""
    import tensorflow as tf
    from petastorm.spark import SparkDatasetConverter

    from lookalike.preprocessing import to_model_input

    converter = SparkDatasetConverter(spec.petastorm_cache_dir, list(spec.petastorm_file_urls),
                                      spec.num_rows)
    t = settings.training
    height, _, channels = spec.image_shape

    def decode(data):
        image = tf.numpy_function(lambda b: to_model_input(bytes(b), height, channels),
                                  [data], tf.float32)
        return tf.ensure_shape(image, spec.image_shape)

    with converter.make_tf_dataset(batch_size=256, num_epochs=None, workers_count=2,
                                   cur_shard=rank, shard_count=size,
                                   seed=t.seed + rank, shuffle_rows=True) as raw:
        # Rows were filtered to the training categories when the converter was made.
        stream = raw.unbatch().map(lambda row: (decode(row.image), tf.cast(row.label, tf.int32)),
                            num_parallel_calls=tf.data.AUTOTUNE)
        yield balanced_batches(stream, spec.image_shape, batch_classes(spec, settings),
                               t.examples_per_class, seed=t.seed + rank)


@contextlib.contextmanager
def training_batches(spec: DataSpec, settings: Settings, rank: int = 0, size: int = 1):
    """The ``fit`` input for either path (a keras Sequence or a tf.data.Dataset)."""
    if spec.mode == "memory":
        yield memory_sampler(spec, settings, rank, size)
    else:
        with petastorm_dataset(spec, settings, rank, size) as dataset:
            yield dataset

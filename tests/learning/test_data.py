"""Training data paths: encoded images (memory-mapped) and Petastorm, shards, class-balanced
batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from lookalike.learning.data import (
    balanced_batches,
    choose_mode,
    memory_arrays,
    memory_sampler,
    petastorm_dataset,
    prepare_training_data,
    shard_rows,
)


def test_memory_path_uses_shared_preprocessing_and_sorted_categories(catalogue, spark):
    from lookalike.catalogue.tables import read_products
    from lookalike.preprocessing import to_model_input

    settings, spec = catalogue
    assert list(spec.categories) == sorted(spec.categories) and len(spec.categories) == 10
    images, y = memory_arrays(spec)
    assert images.shape[1:] == (28, 28, 1) and len(images) == spec.num_rows
    x = images[:]
    assert x.dtype == np.float32 and x.shape == (spec.num_rows, 28, 28, 1)
    row = read_products(spark, settings, ("train",))[0].orderBy("product_id").first()
    first = to_model_input(bytes(row["image"]), 28, 1)
    assert any(np.array_equal(first, xi) for xi in x)
    assert spec.categories[int(y[0])] in spec.categories


def test_the_cache_holds_encoded_bytes_and_never_decodes_a_whole_split(catalogue, spark):
    import pytest

    from lookalike.catalogue.tables import read_products

    settings, spec = catalogue
    images, _ = memory_arrays(spec)
    stored = sum(f.stat().st_size for f in Path(spec.arrays_dir).iterdir())
    # The PNG bytes plus small index files: far below the float32 copy (3,136 bytes an image).
    assert stored < len(images) * 28 * 28 * 4 / 2
    encoded = {bytes(r["image"]) for r in read_products(spark, settings, ("train",))[0]
               .select("image").collect()}
    assert images.encoded(0) in encoded and images.nbytes_encoded <= stored
    with pytest.raises(TypeError, match="by batch"):
        np.asarray(images)
    # A lazy subset decodes the same pixels as the rows it names.
    np.testing.assert_array_equal(images.take([3, 1])[:], images[[3, 1]])


def test_auto_data_path_is_chosen_by_encoded_bytes(catalogue, spark):
    settings, spec = catalogue
    images, _ = memory_arrays(spec)
    fits = settings.replace(training={"data_path": "auto",
                                      "max_in_memory_bytes": images.nbytes_encoded})
    assert prepare_training_data(spark, fits).mode == "memory"
    small = fits.replace(training={"max_in_memory_bytes": images.nbytes_encoded - 1})
    assert choose_mode(small, images.nbytes_encoded) == "petastorm"


def test_shards_are_disjoint_and_cover_the_rows():
    a, b = shard_rows(101, 0, 2, seed=5), shard_rows(101, 1, 2, seed=5)
    assert not set(a) & set(b) and sorted({*a, *b}) == list(range(101))


def test_memory_sampler_batches_are_class_balanced_per_rank(catalogue):
    settings, spec = catalogue
    # Decoded batch by batch (a shard over max_decoded_bytes), as large catalogues are.
    settings = settings.replace(training={"max_decoded_bytes": 1})
    batches = [memory_sampler(spec, settings, rank, 2)[0] for rank in (0, 1)]
    for x, y in batches:
        counts = Counter(np.asarray(y).tolist())
        assert len(counts) == 10 and set(counts.values()) == {4}
    assert not np.array_equal(np.asarray(batches[0][0]), np.asarray(batches[1][0]))
    # Each batch is decoded from the encoded rows: float images in [0, 1].
    x = np.asarray(batches[0][0])
    assert x.shape == (40, 28, 28, 1) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1


def test_memory_sampler_prints_nothing_at_epoch_ends(catalogue, capsys):
    """tensorflow-similarity's sampler print()s a banner when made, and "Warmup complete"
    after the first epoch unless told there is no warm-up (issue 22: library noise on the
    terminal)."""
    settings, spec = catalogue
    capsys.readouterr()
    sampler = memory_sampler(spec, settings)  # its banner goes to the log, not stdout
    for _ in range(3):
        sampler.on_epoch_end()
    assert capsys.readouterr().out == ""


def test_balanced_batches_groups_a_stream_by_class():
    import tensorflow as tf

    labels = np.repeat(np.arange(5), 40)
    images = labels[:, None, None, None].astype(np.float32) * np.ones((1, 2, 2, 1), np.float32)
    stream = tf.data.Dataset.from_tensor_slices((images, labels)).repeat()
    for x, y in balanced_batches(stream, (2, 2, 1), 3, 4, seed=1).take(5):
        y = y.numpy()
        assert x.shape == (12, 2, 2, 1) and len(y) == 12
        assert all(c % 4 == 0 for c in Counter(y.tolist()).values())
        np.testing.assert_array_equal(x.numpy()[:, 0, 0, 0], y)  # images stay with labels


def test_petastorm_path_streams_class_balanced_preprocessed_batches(catalogue, spark):
    settings, memory_spec = catalogue
    spec = prepare_training_data(spark, settings, mode="petastorm")
    assert spec.mode == "petastorm" and spec.num_rows == memory_spec.num_rows
    assert len(spec.petastorm_file_urls) >= 2
    known, _ = memory_arrays(memory_spec)
    known = {xi.tobytes() for xi in known[:]}
    seen = []
    for rank in (0, 1):
        with petastorm_dataset(spec, settings, rank, 2) as dataset:
            for x, y in dataset.take(3):
                x, y = x.numpy(), y.numpy()
                assert x.shape == (40, 28, 28, 1) and x.dtype == np.float32
                assert all(c % 4 == 0 for c in Counter(y.tolist()).values())
                # Same bytes as the in-memory path: the shared preprocessing, nothing else.
                assert all(xi.tobytes() in known for xi in x)
                seen.append({xi.tobytes() for xi in x})
    assert not (seen[0] & seen[3])  # ranks read different shards


def test_a_small_shard_is_decoded_once_and_gives_the_same_batches(catalogue):
    import random

    settings, spec = catalogue
    per_batch = memory_sampler(spec, settings.replace(training={"max_decoded_bytes": 1}))
    random.seed(7)
    x_streamed, y_streamed = per_batch[0]
    once = memory_sampler(spec, settings.replace(training={"max_decoded_bytes": 10**9}))
    random.seed(7)
    x_once, y_once = once[0]
    assert isinstance(once._x, np.ndarray) and once._x.dtype == np.float32
    assert np.issubdtype(per_batch._x.dtype, np.integer)   # row numbers, decoded on demand
    np.testing.assert_array_equal(np.asarray(y_streamed), np.asarray(y_once))
    np.testing.assert_array_equal(np.asarray(x_streamed), np.asarray(x_once))

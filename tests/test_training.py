"""Training: data paths (memory sampler, Petastorm streaming), the shared training function on
one process and on two real Horovod ranks, checkpoint resume, and the MLflow training run."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import numpy as np
import pytest

from lookalike.data import (balanced_batches, memory_arrays, memory_sampler, petastorm_dataset,
                            prepare_training_data, shard_rows)

ITEMS_PER_SPLIT = 200
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def catalogue(training_settings, spark):
    """A small Fashion-MNIST catalogue of its own, with the data prepared for the memory path."""
    from lookalike.catalogue import ingest_fashion_mnist

    settings = training_settings.replace(catalogue={"database": f"tr{uuid.uuid4().hex[:8]}"})
    ingest_fashion_mnist(spark, settings, limit_per_split=ITEMS_PER_SPLIT)
    return settings, prepare_training_data(spark, settings, mode="memory")


def test_memory_path_uses_shared_preprocessing_and_sorted_categories(catalogue, spark):
    from lookalike.catalogue import read_products
    from lookalike.preprocessing import to_model_input

    settings, spec = catalogue
    assert list(spec.categories) == sorted(spec.categories) and len(spec.categories) == 10
    x, y = memory_arrays(spec)
    assert x.dtype == np.float32 and x.shape[1:] == (28, 28, 1) and len(x) == spec.num_rows
    row = read_products(spark, settings, ("train",))[0].orderBy("product_id").first()
    first = to_model_input(bytes(row["image"]), 28, 1)
    assert any(np.array_equal(first, xi) for xi in x)
    assert spec.categories[int(y[0])] in spec.categories


def test_shards_are_disjoint_and_cover_the_rows():
    a, b = shard_rows(101, 0, 2, seed=5), shard_rows(101, 1, 2, seed=5)
    assert not set(a) & set(b) and sorted({*a, *b}) == list(range(101))


def test_memory_sampler_batches_are_class_balanced_per_rank(catalogue):
    settings, spec = catalogue
    batches = [memory_sampler(spec, settings, rank, 2)[0] for rank in (0, 1)]
    for x, y in batches:
        counts = Counter(np.asarray(y).tolist())
        assert len(counts) == 10 and set(counts.values()) == {4}
    assert not np.array_equal(np.asarray(batches[0][0]), np.asarray(batches[1][0]))


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
    known = {xi.tobytes() for xi in known}
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


def test_resume_from_checkpoint_continues_at_the_next_epoch(catalogue, tmp_path):
    import dataclasses

    from lookalike.distributed import read_state, train_embedding

    settings, spec = catalogue
    short = settings.replace(training={"steps_per_epoch": 5, "epochs": 1})
    first = train_embedding(dataclasses.asdict(short), spec.to_dict(), str(tmp_path))
    assert first["initial_epoch"] == 0 and read_state(tmp_path)["epoch"] == 1
    longer = short.replace(training={"epochs": 2})
    second = train_embedding(dataclasses.asdict(longer), spec.to_dict(), str(tmp_path))
    assert second["initial_epoch"] == 1 and len(second["history"]["loss"]) == 1
    assert read_state(tmp_path)["epoch"] == 2
    # Resumed from the epoch-1 weights, not from scratch.
    assert second["probe_loss_before"] == pytest.approx(first["probe_loss_after"], rel=1e-4)


@pytest.mark.slow
def test_two_horovod_ranks_average_gradients(catalogue, spark, tmp_path):
    from lookalike.distributed import run_training

    settings, spec = catalogue
    run = settings.replace(training={"epochs": 2, "steps_per_epoch": 8})
    results = run_training(run, spec, tmp_path, processes=2, return_weights=True, spark=spark)
    assert [r["rank"] for r in results] == [0, 1] and {r["size"] for r in results} == {2}
    # Each rank trained on its own shard ...
    assert results[0]["shard_digest"] != results[1]["shard_digest"]
    # ... yet the trainable weights are identical: gradients were all-reduced every step.
    for w0, w1 in zip(results[0]["trainable_weights"], results[1]["trainable_weights"]):
        np.testing.assert_allclose(np.asarray(w0), np.asarray(w1), atol=1e-5)
    for r in results:
        assert r["probe_loss_after"] < r["probe_loss_before"]
    assert "weights_path" in results[0] and "weights_path" not in results[1]
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 2


def test_trained_run_is_logged_and_its_model_reloads(trained_run, tmp_path):
    import mlflow

    from lookalike.data import load_split
    from lookalike.evaluation import evaluate_embedders
    from lookalike.model import load_embedding_model
    from lookalike.spark import get_spark
    from lookalike.tracking import KIND_TAG, MODEL_ARTIFACT

    settings, run_id = trained_run
    run = mlflow.get_run(run_id)
    assert run.data.tags[KIND_TAG] == "train" and run.info.status == "FINISHED"
    version = int(run.data.tags["lookalike.products_version"])
    assert run.data.tags["lookalike.products_table"].endswith("/products")
    assert run.data.params["training.steps_per_epoch"] == "30"
    history = mlflow.MlflowClient().get_metric_history(run_id, "train_loss")
    assert [h.step for h in history] == [1]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "eval")}
    assert {"eval/neighbours.png", "eval/projection.png", "eval/a_per_class.csv"} <= artifacts

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT,
                                                dst_path=str(tmp_path))
    model = load_embedding_model(local)
    assert model.info["training_run_id"] == run_id
    assert model.info["products_version"] == version and len(model.categories) == 10
    spark = get_spark(settings)
    train, test = (load_split(spark, settings, s, version) for s in ("train", "test"))
    a = model.embed(np.asarray(test.x[:50]))
    np.testing.assert_allclose(a, model.embed(np.asarray(test.x[:50]), batch_size=7), atol=1e-6)
    # The reloaded artifact reproduces the metrics the run logged.
    again = evaluate_embedders(settings, train, test, lambda x: model.embed(x), baseline=False)
    assert again["metrics"]["a_map_at_r"] == pytest.approx(run.data.metrics["a_map_at_r"],
                                                           abs=1e-6)
    assert run.data.metrics["a_recall_at_1"] > run.data.metrics["a_recall_at_1"] * 0 + 0.3


@pytest.mark.slow
def test_generalisation_model_is_trained_without_unseen_categories(catalogue):
    import mlflow

    from lookalike.evaluation import GENERALISATION_ARTIFACT
    from lookalike.model import load_embedding_model
    from lookalike.training import train_and_log

    settings, _ = catalogue
    run_settings = settings.replace(training={"steps_per_epoch": 10},
                                    evaluation={"generalisation": True})
    result = train_and_log(run_settings, processes=1, use_tuned=False)
    unseen = set(settings.evaluation.unseen_categories)
    for name in ("a_recall_at_1", "b_recall_at_1", "b_map_at_r", "baseline_b_recall_at_1"):
        assert 0.0 <= result[name] <= 1.0
    assert result["b_n_queries"] > 0
    local = mlflow.artifacts.download_artifacts(run_id=result["run_id"],
                                                artifact_path=GENERALISATION_ARTIFACT)
    info = load_embedding_model(local).info
    assert info["train_categories"] and not unseen & set(info["train_categories"])
    assert len(info["categories"]) == 10  # label ids still index the full sorted list

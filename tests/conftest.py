"""Shared fixtures: one real local SparkSession with Delta for the whole test run, and settings
rooted in a temporary LOOKALIKE_HOME so tests never touch a user's data."""

from __future__ import annotations

import os
import uuid

import interpreted_spark
import pandas as pd
import pytest

from lookalike.config import Settings, load_settings
from lookalike.runtime import prefer_onednn

# Every Spark session started by this process or a child of it runs interpreted
# (tests/interpreted_spark.py); a user's own PYSPARK_SUBMIT_ARGS is kept.
os.environ.setdefault("PYSPARK_SUBMIT_ARGS", interpreted_spark.submit_args())
# TensorFlow as the `lookalike` command loads it, in this process and its children.
prefer_onednn()


# `make test` runs the suite on pytest-xdist workers (`--dist loadgroup`, collection order
# kept), the two longest tests first. On two workers (2 cores, `make test`'s default) one
# worker runs both rehearsals and the other everything else: the session's shared fixtures (a
# Spark session, a trained run, a packaged and served model) are then built once, not once per
# worker, and as the suite is CPU-bound, work not done twice is time saved (docs/testing.md).
# With more workers the rehearsals start one on each and the short tests fill in around them.
LONGEST_FIRST = ("tests/rehearsal/test_workspace_rehearsal.py::test_prod",
                 "tests/rehearsal/test_workspace_rehearsal.py::test_dev")


def pytest_collection_modifyitems(items) -> None:
    def longest(item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST)
                     if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=longest)  # stable: the rest keep their order


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown without xdist
def pytest_xdist_make_scheduler(config, log):
    """loadgroup's scheduler, with the two-worker split above. (A scheduler, not xdist_group
    marks: pytest-xdist 3.8 marks a group in ``item._nodeid``, which pytest 9 no longer reads.)"""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class RehearsalsApart(LoadGroupScheduling):
        two_workers: bool | None = None  # decided once: idle workers are shut down later

        def _split_scope(self, nodeid: str) -> str:
            if self.two_workers is None:
                self.two_workers = len(self.nodes) == 2
            if self.two_workers:
                return "rehearsals" if nodeid.startswith("tests/rehearsal/") else "the rest"
            return super()._split_scope(nodeid)

    return RehearsalsApart(config, log)


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("lookalike-home")
    os.environ["LOOKALIKE_HOME"] = str(path)
    return str(path)


@pytest.fixture(scope="session")
def base_settings(home) -> Settings:
    """Settings sized for tests: two local cores, few partitions."""
    return load_settings(overrides={
        "home": home,
        "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "3g"},
        "catalogue": {"ingest_partitions": 2},
        "embedding": {"partitions": 2},
    })


@pytest.fixture()
def settings(base_settings) -> Settings:
    """Per-test settings with a fresh catalogue database, so tables never leak between tests."""
    return base_settings.replace(catalogue={"database": f"t{uuid.uuid4().hex[:10]}"})


@pytest.fixture(scope="session")
def spark(base_settings):
    from lookalike.spark import get_spark

    session = get_spark(base_settings)
    yield session
    session.stop()


# ==== training fixtures (owner: training; session-scoped) ======================================
#   training_settings -> Settings for tiny, fast models (width 8, 32-d, 10 classes x 4 / batch).
#   trained_run       -> (settings, run_id): a real `train_and_log` run (see its docstring).
TRAINED_RUN_ITEMS_PER_SPLIT = 300


@pytest.fixture(scope="session")
def training_settings(base_settings) -> Settings:
    """Base test settings with a tiny recipe: compact_cnn width 8, 32-d embedding, batches of
    10 classes x 4 examples, in-memory data, one process, no tuned params, small evaluation."""
    return base_settings.replace(
        model={"width": 8, "embedding_size": 32},
        training={"epochs": 1, "steps_per_epoch": 30, "classes_per_batch": 10,
                  "examples_per_class": 4, "data_path": "memory", "processes": 1},
        evaluation={"max_queries": 200, "plot_queries": 4, "generalisation": False},
        tuning={"epochs": 1, "max_validation_queries": 100})


@pytest.fixture(scope="session")
def trained_run(training_settings, spark) -> tuple[Settings, str]:
    """A finished MLflow ``train`` run made by ``lookalike.training.train_and_log``.

    Returns ``(settings, run_id)``: ``settings`` point at the run's own catalogue database
    (``TRAINED_RUN_ITEMS_PER_SPLIT`` Fashion-MNIST images of each official split ingested:
    ~270 train, ~30 val, 300 test, 10 categories) and the session's MLflow store; the run
    (1 epoch x 30 steps) holds the artifact ``embedding_model/`` (load it with
    ``lookalike.model.load_embedding_model``), ``eval/`` plots and tables, and metrics
    ``a_recall_at_1``, ``a_map_at_r``, ``baseline_a_*``, ``train_loss``.
    """
    from lookalike.catalogue.ingest import ingest_fashion_mnist
    from lookalike.learning.training import train_and_log

    settings = training_settings.replace(catalogue={"database": f"trained{uuid.uuid4().hex[:8]}"})
    ingest_fashion_mnist(spark, settings, limit_per_split=TRAINED_RUN_ITEMS_PER_SPLIT)
    result = train_and_log(settings, processes=1, use_tuned=False)
    return settings, result["run_id"]
# ==== end of training fixtures =================================================================


# ==== embedding / serving / registry fixtures (owner: serving; session-scoped) ==============
#   embedding_run  -> (settings, run_id): a finished "train" run with an `embedding_model`
#                     artifact: the training fixtures' `trained_run` when defined, else a tiny
#                     untrained compact_cnn logged here (deterministic, fast).
#   packaged_model -> PackagedModel(settings, run_id, model_uri, version, products): a small
#                     Fashion-MNIST catalogue (SERVING_ITEMS_PER_SPLIT x 2) embedded, indexed,
#                     packaged, registered (a model name unique to the session) and promoted.
#                     settings has small serving limits (max_batch 8, max_k 50, 200 kB, 500x500 px,
#                     1 MB bodies, decode cost 1 MB per image and 2 MB per request, 20 answer
#                     images, 2 s header timeout);
#                     products: pandas DataFrame product_id, category, image (PNG bytes).
#   served_model   -> str, base URL "http://127.0.0.1:<port>" of a real `mlflow models serve`
#                     of packaged_model.model_uri (models:/<name>@champion); POST JSON to
#                     <url>/invocations (contract: lookalike.serving docstring). Killed at teardown.
import typing  # noqa: E402 (kept inside this section)

SERVING_ITEMS_PER_SPLIT = 60


class PackagedModel(typing.NamedTuple):
    settings: Settings
    run_id: str
    model_uri: str
    version: int
    products: pd.DataFrame


def _tiny_training_run(settings: Settings) -> str:
    """Log an untrained compact_cnn as a finished 'train' run (stand-in for trained_run)."""
    import tempfile

    import mlflow
    import tensorflow as tf

    from lookalike.learning.model import build_model, embedding_network, save_embedding_model
    from lookalike.tracking import KIND_TAG, MODEL_ARTIFACT, configure_mlflow

    tf.keras.utils.set_random_seed(7)
    configure_mlflow(settings)
    model = embedding_network(build_model(settings), settings)
    with mlflow.start_run(tags={KIND_TAG: "train"}) as run, tempfile.TemporaryDirectory() as tmp:
        directory = save_embedding_model(model, f"{tmp}/{MODEL_ARTIFACT}", {
            "distance": settings.model.distance, "backbone": settings.model.backbone,
            "categories": [], "training_run_id": run.info.run_id})
        mlflow.log_artifacts(str(directory), MODEL_ARTIFACT)
        mlflow.log_metrics({"a_map_at_r": 0.5, "val_a_map_at_r": 0.5})
    return run.info.run_id


@pytest.fixture(scope="session")
def embedding_run(request, base_settings) -> tuple[Settings, str]:
    try:
        return request.getfixturevalue("trained_run")
    except pytest.FixtureLookupError:
        settings = base_settings.replace(model={"width": 8, "embedding_size": 32})
        return settings, _tiny_training_run(settings)


@pytest.fixture(scope="session")
def packaged_model(embedding_run, spark) -> PackagedModel:
    from lookalike.catalogue.ingest import ingest_fashion_mnist
    from lookalike.catalogue.tables import read_products
    from lookalike.embeddings import embed_catalogue
    from lookalike.index.build import build_index
    from lookalike.registry import promote
    from lookalike.serving.package import package_and_register
    from lookalike.serving.validation import validate_version

    run_settings, run_id = embedding_run
    settings = run_settings.replace(
        catalogue={"database": f"serving{uuid.uuid4().hex[:8]}"},
        registry={"model_name": f"lookalike-test-{uuid.uuid4().hex[:8]}"},
        serving={"max_batch": 8, "max_k": 50, "max_image_bytes": 200_000,
                 "max_pixels": 250_000, "max_body_bytes": 1_000_000,
                 "max_decode_bytes": 1_000_000, "max_request_decode_bytes": 2_000_000,
                 "max_answer_images": 20,
                 "header_timeout_seconds": 2})
    ingest_fashion_mnist(spark, settings, limit_per_split=SERVING_ITEMS_PER_SPLIT)
    embed_catalogue(settings, run_id=run_id)
    build_index(settings, run_id=run_id)
    registered = package_and_register(settings, run_id=run_id)
    # The fresh-environment check with uv is tests/serving/test_validation.py's; here in-process.
    assert validate_version(settings, registered["version"], env_manager="local")["passed"]
    promote(settings, version=registered["version"])
    products = read_products(spark, settings)[0].select("product_id", "category", "image")
    return PackagedModel(settings, run_id, f"models:/{settings.registry.model_name}@champion",
                         registered["version"], products.toPandas())


@pytest.fixture(scope="session")
def served_model(packaged_model) -> str:
    from lookalike.serving.server import start_server, stop_server

    process, url = start_server(packaged_model.settings, packaged_model.model_uri)
    yield url
    stop_server(process)
# ==== end of embedding / serving / registry fixtures ==========================================

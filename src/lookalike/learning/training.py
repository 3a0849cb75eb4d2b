"""``lookalike train``: tuned parameters -> data -> (Horovod) training -> SavedModel -> evaluation,
all recorded in one MLflow run tagged ``lookalike.kind=train``.

What the run holds:

* params: every ``model.*`` and ``training.*`` setting used (after tuned parameters), the
  number of processes, where the tuned parameters came from;
* tags: ``lookalike.products_table`` / ``lookalike.products_version`` (the Delta snapshot read),
  ``lookalike.data_path`` (memory or petastorm), ``lookalike.params_run_id``;
* metrics: ``train_loss`` per epoch (rank 0), ``train_images_per_second``, ``train_seconds``,
  and the evaluation metrics of :mod:`lookalike.evaluation` (``a_*``, ``b_*``, ``baseline_*``);
* artifacts: ``embedding_model/`` (:func:`lookalike.model.save_embedding_model`), with
  ``evaluation.generalisation`` also ``generalisation_model/`` (same format, trained without
  ``evaluation.unseen_categories``), and ``eval/`` tables and plots.

Checkpoints live in ``LOOKALIKE_HOME/checkpoints/<run_id>``; ``train_and_log(...,
resume_run_id=ID)`` continues a crashed run from its last complete epoch.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lookalike.config import Settings
from lookalike.console import say
from lookalike.learning.params import TUNING_KEY_TAG, apply_params, trained_params, tuning_key

PARAMS_SOURCE_TAG = "lookalike.params_run_id"


def load_best_params(run_id: str) -> dict[str, Any]:
    """The ``best_params.json`` artifact of a tuning run."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="best_params.json",
                                                   dst_path=tmp)
        return json.loads(Path(path).read_text(encoding="utf-8"))


def resolve_params(settings: Settings, params_run_id: str | None, use_tuned: bool,
                   products_version: int | None = None) -> tuple[dict[str, Any], str | None]:
    """(parameters to apply, tuning run id they came from or None).

    ``params_run_id`` is used as given. Otherwise (``use_tuned``, and ``tuning.enabled``) only
    the latest tuning run with this profile, backbone, image geometry and ``products_version``
    counts (:func:`~lookalike.learning.params.tuning_key`): parameters tuned for another
    catalogue or network are never applied in silence.
    """
    from lookalike.tracking import latest_run, require_run

    if params_run_id:
        run = require_run(settings, "tune", params_run_id)
    elif use_tuned and settings.tuning.enabled and products_version is not None:
        key = tuning_key(settings, products_version)
        run = latest_run(settings, "tune", f"tags.`{TUNING_KEY_TAG}` = '{key}'")
        if run is None:
            return {}, None
    else:
        return {}, None
    return trained_params(settings, load_best_params(run.info.run_id)), run.info.run_id


def checkpoint_root(settings: Settings) -> Path:
    return settings.home_path / "checkpoints"


def save_trained(settings: Settings, spec, weights_path: str, directory: Path,
                 run_id: str) -> Path:
    """Rebuild the model, load rank 0's final weights and save the embedding SavedModel."""
    from lookalike.learning.data import label_count, resolve_train_categories
    from lookalike.learning.model import (build_model, embedding_network, precision_policy,
                                          save_embedding_model)

    model = build_model(settings, label_count(spec))
    model.load_weights(weights_path).expect_partial()
    mixed = None
    if settings.training.precision != "float32":
        # The same weights for GPU batch embedding (embedding.precision=mixed).
        with precision_policy(settings.training.precision):
            mixed = build_model(settings, label_count(spec))
        mixed.load_weights(weights_path).expect_partial()
    info = {
        "backbone": settings.model.backbone, "distance": settings.model.distance,
        "embedding_from": settings.model.embedding_from,
        "test_time_flip": settings.model.test_time_flip,
        "proxy_weight": settings.model.proxy_weight,
        "categories": list(spec.categories),
        "train_categories": list(resolve_train_categories(settings, spec.categories)),
        "products_table": spec.products_table, "products_version": spec.products_version,
        "training_run_id": run_id, "profile": settings.profile,
    }
    if mixed is not None:
        mixed = embedding_network(mixed, settings)
    return save_embedding_model(embedding_network(model, settings), directory, info, mixed)


def _flat(prefix: str, section) -> dict[str, str]:
    out = {}
    for key, value in dataclasses.asdict(section).items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        out[f"{prefix}.{key}"] = str(value)[:500]
    return out


def train_and_log(settings: Settings, processes: int | None = None,
                  params_run_id: str | None = None, use_tuned: bool = True,
                  resume_run_id: str | None = None, tags: dict | None = None) -> dict:
    """Train (and evaluate) the embedding model; return ``{"run_id", metrics...}``.

    ``processes`` > 1 trains with that many Horovod ranks (``horovod.spark.run``); default
    ``training.processes``. Tuned parameters come from ``params_run_id``, else the latest
    compatible tuning run (unless ``use_tuned`` is false; see :func:`resolve_params`);
    ``tuning.exclude_from_training`` are skipped.
    With ``evaluation.generalisation`` a second model is trained on the categories not in
    ``evaluation.unseen_categories`` (same recipe) for protocol (b).
    """
    import mlflow

    from lookalike.learning.data import prepare_training_data
    from lookalike.learning.distributed import run_training
    from lookalike.learning.evaluation import evaluate_and_log
    from lookalike.learning.model import load_embedding_model
    from lookalike.spark import get_spark
    from lookalike.tracking import KIND_TAG, MODEL_ARTIFACT, configure_mlflow

    configure_mlflow(settings)
    spark = get_spark(settings)
    from lookalike.catalogue.tables import products_version as latest_products_version

    products_version = latest_products_version(spark, settings)
    params, source = resolve_params(settings, params_run_id, use_tuned, products_version)
    tuned = apply_params(settings, params)
    processes = int(processes or settings.training.processes)
    say("train", f"preparing data (tuned params from {source or 'config'}: {params})")
    spec = prepare_training_data(spark, tuned)

    tags = {KIND_TAG: "train", "lookalike.products_table": spec.products_table,
            "lookalike.products_version": str(spec.products_version),
            "lookalike.data_path": spec.mode, PARAMS_SOURCE_TAG: source or "", **(tags or {})}
    with mlflow.start_run(run_id=resume_run_id, tags=None if resume_run_id else tags) as run:
        run_id = run.info.run_id
        if not resume_run_id:
            mlflow.log_params({**_flat("model", tuned.model), **_flat("training", tuned.training),
                               "processes": processes, "profile": settings.profile,
                               "products_version": spec.products_version,
                               "num_train_rows": spec.num_rows})
        checkpoints = checkpoint_root(settings) / run_id
        metrics: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            results = run_training(tuned, spec, checkpoints / "main", processes, run_id,
                                   settings.tracking_uri, spark=spark)
            metrics.update(_throughput(results, ""))
            main_dir = save_trained(tuned, spec, results[0]["weights_path"],
                                    Path(tmp) / MODEL_ARTIFACT, run_id)
            mlflow.log_artifacts(str(main_dir), MODEL_ARTIFACT)

            unseen_model = None
            if settings.evaluation.generalisation:
                unseen_model = _train_generalisation(tuned, spec, spark, processes, run_id,
                                                     checkpoints, Path(tmp), metrics)

            mlflow.log_metrics(metrics)
            say("train", "evaluating")
            metrics.update(evaluate_and_log(tuned, spark, spec.products_version,
                                            load_embedding_model(main_dir), unseen_model))
        # The run finished: its checkpoints are no longer needed for a resume.
        shutil.rmtree(checkpoints, ignore_errors=True)
    return {"run_id": run_id, "processes": processes, "data_path": spec.mode,
            "products_version": spec.products_version, "params_run_id": source, **metrics}


def _train_generalisation(tuned: Settings, spec, spark, processes: int, run_id: str,
                          checkpoints: Path, tmp: Path, metrics: dict):
    """Protocol (b)'s second model, trained without ``evaluation.unseen_categories`` and logged
    as ``generalisation_model``; None (said plainly) when this catalogue has none of them."""
    import mlflow

    from lookalike.learning.data import prepare_training_data
    from lookalike.learning.distributed import run_training
    from lookalike.learning.evaluation import GENERALISATION_ARTIFACT, unseen_problem
    from lookalike.learning.model import load_embedding_model

    unseen = tuned.evaluation.unseen_categories
    problem = unseen_problem(unseen, spec.categories)
    if problem:
        say("train", problem)
        mlflow.set_tag("lookalike.protocol_b", problem)
        return None
    seen = [c for c in spec.categories if c not in set(unseen)]
    gen_settings = tuned.replace(training={"train_categories": seen})
    say("train", f"protocol (b) model on {len(seen)} seen categories")
    gen_spec = prepare_training_data(spark, gen_settings, spec.products_version)
    gen_results = run_training(gen_settings, gen_spec, checkpoints / "generalisation",
                               processes, None, tuned.tracking_uri, spark=spark)
    metrics.update(_throughput(gen_results, "generalisation_"))
    gen_dir = save_trained(gen_settings, gen_spec, gen_results[0]["weights_path"],
                           tmp / GENERALISATION_ARTIFACT, run_id)
    mlflow.log_artifacts(str(gen_dir), GENERALISATION_ARTIFACT)
    return load_embedding_model(gen_dir)


def _throughput(results: list[dict], prefix: str) -> dict[str, float]:
    seconds = max(r["seconds"] for r in results) or float("nan")
    images = sum(r["images"] for r in results)
    out = {f"{prefix}train_seconds": float(seconds),
           f"{prefix}train_images_per_second": float(images / seconds) if seconds else 0.0}
    history = results[0].get("history", {}).get("loss")
    if history:
        out[f"{prefix}final_train_loss"] = float(history[-1])
    return out

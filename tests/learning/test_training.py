"""`lookalike train`: the MLflow run, its model, the protocol (b) model."""

from __future__ import annotations

import numpy as np
import pytest


def test_trained_run_is_logged_and_its_model_reloads(trained_run, tmp_path):
    import mlflow

    from lookalike.learning.data import load_split
    from lookalike.learning.evaluation import evaluate_embedders
    from lookalike.learning.model import load_embedding_model
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

    from lookalike.learning.evaluation import GENERALISATION_ARTIFACT
    from lookalike.learning.model import load_embedding_model
    from lookalike.learning.training import train_and_log

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

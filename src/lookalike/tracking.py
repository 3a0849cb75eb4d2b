"""MLflow wiring shared by every job: where runs and models are stored, and finding past runs.

Locally tracking and registry are one sqlite file under LOOKALIKE_HOME (MLflow 3 refuses a
plain file store) with artifacts beside it; on Databricks the workspace server is used.
Runs are tagged with ``lookalike.kind`` (tune, train, package) so jobs can find the latest one.
"""

from __future__ import annotations

import os

from lookalike.config import Settings
from lookalike.spark import on_databricks

KIND_TAG = "lookalike.kind"
# Artifact folder of a training run holding the embedding SavedModel and its lookalike.json.
MODEL_ARTIFACT = "embedding_model"


def configure_mlflow(settings: Settings) -> str:
    """Point MLflow at the configured stores and return the experiment id (created if needed)."""
    import mlflow

    if on_databricks() and not settings.mlflow.tracking_uri:
        mlflow.set_tracking_uri("databricks")
        mlflow.set_registry_uri("databricks-uc")
        experiment = mlflow.set_experiment(f"/Shared/{settings.mlflow.experiment}")
        return experiment.experiment_id
    settings.home_path.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    # Child processes (Spark workers, Horovod ranks, `mlflow models serve`) inherit these.
    os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    os.environ["MLFLOW_REGISTRY_URI"] = settings.registry_uri
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    if experiment is None:
        artifacts = settings.artifacts_path
        artifacts.mkdir(parents=True, exist_ok=True)
        experiment_id = client.create_experiment(settings.mlflow.experiment,
                                                 artifact_location=artifacts.as_uri())
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def latest_run(settings: Settings, kind: str, extra_filter: str = ""):
    """The most recent FINISHED top-level run tagged ``lookalike.kind = kind``, or None."""
    import mlflow

    experiment_id = configure_mlflow(settings)
    query = f"tags.`{KIND_TAG}` = '{kind}' and attributes.status = 'FINISHED'"
    if extra_filter:
        query += f" and {extra_filter}"
    runs = mlflow.search_runs([experiment_id], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=20,
                              output_format="list")
    top_level = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return top_level[0] if top_level else None


def require_run(settings: Settings, kind: str, run_id: str | None):
    """The run ``run_id`` (checked to be of ``kind``), or the latest of that kind; clear error if none."""
    import mlflow

    if run_id:
        configure_mlflow(settings)
        try:
            run = mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException as error:
            raise ValueError(f"no MLflow run with id {run_id!r}") from error
        if run.data.tags.get(KIND_TAG) != kind:
            raise ValueError(f"run {run_id} is a {run.data.tags.get(KIND_TAG)!r} run, "
                             f"not a {kind!r} run")
        return run
    run = latest_run(settings, kind)
    if run is None:
        raise ValueError(f"no finished {kind!r} run yet: run `lookalike {kind}` first")
    return run

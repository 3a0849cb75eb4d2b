"""Test helper: MLflow runs made by hand (a module, not conftest: conftest names clash)."""

from __future__ import annotations


def copy_training_run(settings, run_id: str) -> str:
    """A new finished 'train' run holding the same embedding_model artifact (a new model
    version with identical weights)."""
    import mlflow

    from lookalike.learning.artifacts import resolve_model
    from lookalike.tracking import KIND_TAG, MODEL_ARTIFACT

    _, local = resolve_model(settings, run_id)
    with mlflow.start_run(tags={KIND_TAG: "train"}) as run:
        mlflow.log_artifacts(str(local), MODEL_ARTIFACT)
    return run.info.run_id

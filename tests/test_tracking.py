"""MLflow wiring: the sqlite store under LOOKALIKE_HOME, finding runs by kind, clear errors."""

from __future__ import annotations

import mlflow
import pytest

from lookalike.tracking import KIND_TAG, configure_mlflow, latest_run, require_run


@pytest.fixture()
def settings(base_settings, tmp_path):
    """A store of its own; the session's store is configured again afterwards."""
    yield base_settings.replace(home=str(tmp_path), mlflow={"experiment": "tracking-test"})
    configure_mlflow(base_settings)


def test_latest_and_required_runs_by_kind(settings, tmp_path):
    configure_mlflow(settings)
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert latest_run(settings, "train") is None
    with pytest.raises(ValueError, match="no finished 'train' run yet"):
        require_run(settings, "train", None)
    with mlflow.start_run(tags={KIND_TAG: "train"}) as older:
        pass
    with mlflow.start_run(tags={KIND_TAG: "train"}) as newer:
        pass
    with mlflow.start_run(tags={KIND_TAG: "tune"}) as tune:
        pass
    assert latest_run(settings, "train").info.run_id == newer.info.run_id
    assert require_run(settings, "train", older.info.run_id).info.run_id == older.info.run_id
    with pytest.raises(ValueError, match="is a 'tune' run, not a 'train' run"):
        require_run(settings, "train", tune.info.run_id)
    with pytest.raises(ValueError, match="no MLflow run with id"):
        require_run(settings, "train", "0" * 32)

"""The workspace API seam (lookalike.workspace): what its stand-in enforces, and the
experiment's folder made before the experiment (issue 18, item 2)."""

from __future__ import annotations

import pytest

from lookalike import workspace
from lookalike.workspace import StandIn


def test_workspace_paths_must_be_absolute_and_clean():
    assert workspace.check_workspace_path("/Users/ada@example.com/lookalike-dev")
    for bad in ("/Shared//Users/ada/lookalike-dev", "lookalike", "/Shared/a/../b", ""):
        with pytest.raises(ValueError, match="not an absolute workspace path"):
            workspace.check_workspace_path(bad)


def test_the_stand_in_refuses_what_it_does_not_know(tmp_path):
    with pytest.raises(NotImplementedError, match="does not know"):
        StandIn(tmp_path).do("GET", "/api/2.0/clusters/list")


def test_endpoint_query_permissions_for_groups_and_service_principals(tmp_path):
    standin = StandIn(tmp_path)
    sp = "6f1c2a3b-1234-4abc-9def-0123456789ab"
    acl = workspace.grant_endpoint_query("id-shop", ["users", sp], standin)
    assert acl == [{"group_name": "users", "permission_level": "CAN_QUERY"},
                   {"service_principal_name": sp, "permission_level": "CAN_QUERY"}]
    assert standin._load()["permissions"]["/api/2.0/permissions/serving-endpoints/id-shop"] == acl


def test_configure_mlflow_on_a_cluster_uses_the_configured_path_and_makes_its_folder(
        monkeypatch, tmp_path):
    """Before: ``/Shared/`` was prefixed to every experiment (``/Shared//Users/...``) and the
    parent of ``/Shared/lookalike/prod`` never made: Databricks answers RESOURCE_DOES_NOT_EXIST."""
    import mlflow

    from lookalike.config import load_settings
    from lookalike.tracking import configure_mlflow

    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    monkeypatch.setenv(workspace.STANDIN_ENV, str(tmp_path / "ws"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = load_settings(overrides={"home": str(tmp_path), "mlflow": {
        "tracking_uri": uri, "experiment": "/Shared/lookalike/prod"}})
    experiment_id = configure_mlflow(settings)
    assert mlflow.MlflowClient(uri).get_experiment(experiment_id).name == "/Shared/lookalike/prod"
    assert "/Shared/lookalike" in StandIn(tmp_path / "ws")._load()["folders"]
    with pytest.raises(ValueError, match="not an absolute workspace path"):
        configure_mlflow(settings.replace(mlflow={"experiment": "lookalike"}))

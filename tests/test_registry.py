"""Packaging, registration, aliases and champion/challenger promotion on a real MLflow registry."""

from __future__ import annotations

import uuid

import pytest


def test_package_registers_challenger_with_lineage_tags(packaged_model):
    import mlflow

    from lookalike.tracking import KIND_TAG, configure_mlflow

    settings = packaged_model.settings
    configure_mlflow(settings)
    client = mlflow.MlflowClient()
    name = settings.registry.model_name
    version = client.get_model_version(name, str(packaged_model.version))
    assert version.tags["training_run"] == packaged_model.run_id
    assert int(version.tags["index_size"]) == len(packaged_model.products)
    assert int(version.tags["delta_version"]) >= 0
    assert client.get_model_version_by_alias(name, "challenger").version == version.version
    # The fixture promoted it: the first version becomes champion.
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    assert "first version" in version.tags["lookalike.promotion"]

    package_run = client.get_run(version.tags["package_run"])
    assert package_run.data.tags[KIND_TAG] == "package"
    assert package_run.data.params["training_run_id"] == packaged_model.run_id
    training = client.get_run(packaged_model.run_id)
    assert package_run.data.metrics.keys() >= training.data.metrics.keys()


def copy_training_run(settings, run_id: str) -> str:
    """A new finished 'train' run holding the same embedding_model artifact (a new model
    version with identical weights)."""
    import mlflow

    from lookalike.embedding import resolve_model
    from lookalike.tracking import KIND_TAG, MODEL_ARTIFACT

    _, local = resolve_model(settings, run_id)
    with mlflow.start_run(tags={KIND_TAG: "train"}) as run:
        mlflow.log_artifacts(str(local), MODEL_ARTIFACT)
    return run.info.run_id


def test_package_without_index_is_a_clear_error(embedding_run):
    from lookalike.registry import package_and_register
    from lookalike.tracking import configure_mlflow

    settings, run_id = embedding_run
    settings = settings.replace(registry={"model_name": f"noindex-{uuid.uuid4().hex[:6]}"})
    configure_mlflow(settings)
    with pytest.raises(ValueError, match="build-index"):
        package_and_register(settings, run_id=copy_training_run(settings, run_id))


def _training_run(value: float | None) -> str:
    import mlflow

    from lookalike.tracking import KIND_TAG

    with mlflow.start_run(tags={KIND_TAG: "train"}) as run:
        if value is not None:
            mlflow.log_metric("a_map_at_r", value)
    return run.info.run_id


def test_promotion_moves_champion_only_when_not_worse(packaged_model):
    import mlflow

    from lookalike.registry import promote, register_version
    from lookalike.tracking import configure_mlflow

    settings = packaged_model.settings.replace(
        registry={"model_name": f"promo-{uuid.uuid4().hex[:8]}", "promotion_metric": "a_map_at_r",
                  "promotion_tolerance": 0.01})
    configure_mlflow(settings)
    client = mlflow.MlflowClient()
    name = settings.registry.model_name
    source = client.get_model_version(packaged_model.settings.registry.model_name,
                                      str(packaged_model.version)).source

    def new_version(value):
        return register_version(settings, source, {"training_run": _training_run(value)}).version

    def champion():
        return client.get_model_version_by_alias(name, "champion").version

    with pytest.raises(ValueError, match="challenger"):
        promote(settings)

    v1 = new_version(0.50)
    first = promote(settings)
    assert first["promoted"] and champion() == v1

    v2 = new_version(0.40)                       # worse: champion stays
    worse = promote(settings)
    assert not worse["promoted"] and champion() == v1
    assert "champion kept" in worse["reason"]
    assert client.get_model_version_by_alias(name, "challenger").version == v2
    assert "champion kept" in client.get_model_version(name, v2).tags["lookalike.promotion"]

    v3 = new_version(0.495)                      # within tolerance: not worse, moves
    within = promote(settings)
    assert within["promoted"] and champion() == v3
    assert within["champion_value"] == pytest.approx(0.50)

    v4 = new_version(0.70)                       # better: moves
    assert promote(settings)["promoted"] and champion() == v4

    again = promote(settings)                    # challenger already champion
    assert not again["promoted"] and "already" in again["reason"]

    assert promote(settings, version=v3)["promoted"] is False   # explicit older, worse version
    assert champion() == v4

    new_version(None)                            # no metric: refuse to guess
    with pytest.raises(ValueError, match="a_map_at_r"):
        promote(settings)
    assert champion() == v4

"""Promotion: champion moves only when the challenger is not worse."""

from __future__ import annotations

import uuid

import pytest


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

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

    from lookalike.registry import BASED_ON_TAG, VALIDATION_TAG, promote, register_version
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
        return register_version(settings, source, {"training_run": _training_run(value),
                                                   VALIDATION_TAG: "passed"}).version

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

    new_version(None)                            # no metric: refused, with the reason
    missing = promote(settings)
    assert not missing["promoted"] and "no finite a_map_at_r" in missing["reason"]
    new_version(float("nan"))                    # NaN: refused too
    assert not promote(settings)["promoted"] and champion() == v4

    # Better, but never validated: refused. Better and validated, but packaged while v3 was
    # champion (another job promoted v4 meanwhile): refused. Packaged on v4: promoted.
    unvalidated = register_version(settings, source, {"training_run": _training_run(0.9)})
    refused = promote(settings)
    assert not refused["promoted"] and "not validated" in refused["reason"]
    assert unvalidated.version != champion() == v4
    tags = {"training_run": _training_run(0.9), VALIDATION_TAG: "passed"}
    register_version(settings, source, {**tags, BASED_ON_TAG: str(v3)})
    stale = promote(settings)
    assert not stale["promoted"] and "champion moved" in stale["reason"] and champion() == v4
    fresh = register_version(settings, source, {**tags, BASED_ON_TAG: str(v4)}).version
    assert promote(settings)["promoted"] and champion() == fresh


def test_promotion_decisions_with_missing_and_nan_metrics():
    from lookalike.registry import decide_promotion

    nan = float("nan")
    assert decide_promotion(nan, None, 1, None, "m", 0.0)[0] is False    # first, unmeasured
    assert decide_promotion(None, None, 1, None, "m", 0.0)[0] is False
    assert decide_promotion(0.3, None, 1, None, "m", 0.0)[0] is True     # first, measured
    promoted, reason = decide_promotion(0.1, nan, 2, 1, "m", 0.0)         # NaN champion
    assert promoted and "no finite m" in reason
    assert decide_promotion(0.5, 0.6, 2, 1, "m", 0.05)[0] is False
    assert decide_promotion(0.56, 0.6, 2, 1, "m", 0.05)[0] is True


def test_promotion_guards():
    from lookalike.registry import BASED_ON_TAG, NO_CHAMPION, VALIDATION_TAG, guard_reason

    passed = {VALIDATION_TAG: "passed: 5 checks"}
    assert guard_reason(passed, None, True) is None
    assert guard_reason({**passed, BASED_ON_TAG: NO_CHAMPION}, None, True) is None
    assert "champion moved" in guard_reason({**passed, BASED_ON_TAG: NO_CHAMPION}, 3, True)
    assert guard_reason({**passed, BASED_ON_TAG: "3"}, 3, True) is None
    assert "not validated (failed: x)" in guard_reason({VALIDATION_TAG: "failed: x"}, 3, True)
    assert guard_reason({}, 3, False) is None


def test_champion_names_the_training_run_jobs_refresh(packaged_model):
    """`--run-id champion`: what the daily job embeds, indexes and packages with."""
    from lookalike import cli
    from lookalike.registry import resolve_run_id

    settings = packaged_model.settings
    assert resolve_run_id(settings, "champion") == packaged_model.run_id
    assert resolve_run_id(settings, "abc") == "abc" and resolve_run_id(settings, None) is None
    assert cli._run_id(cli.parse(["embed", "--run-id", "champion"]), settings) == \
        packaged_model.run_id
    empty = settings.replace(registry={"model_name": f"none-{uuid.uuid4().hex[:8]}"})
    with pytest.raises(ValueError, match="has no 'champion' yet"):
        resolve_run_id(empty, "champion")


def test_registering_a_version_prints_nothing_on_the_terminal(packaged_model, capfd, tmp_path,
                                                              monkeypatch):
    """MLflow's "Successfully registered model ..." print goes to the log file, not the
    terminal (issue 22: no third-party line outside LOOKALIKE_VERBOSE)."""
    import mlflow

    from lookalike.console import LOG_FILE_ENV
    from lookalike.registry import register_version
    from lookalike.tracking import configure_mlflow

    log = tmp_path / "lookalike.log"
    monkeypatch.setenv(LOG_FILE_ENV, str(log))
    settings = packaged_model.settings.replace(
        registry={"model_name": f"quiet-{uuid.uuid4().hex[:8]}"})
    configure_mlflow(settings)
    source = mlflow.MlflowClient().get_model_version(
        packaged_model.settings.registry.model_name, str(packaged_model.version)).source
    capfd.readouterr()
    register_version(settings, source, {"training_run": "r"})
    out, err = capfd.readouterr()
    assert "Successfully registered" not in out + err, out + err
    assert "Successfully registered" in log.read_text()

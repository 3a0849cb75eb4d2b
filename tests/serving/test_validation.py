"""`lookalike validate`: the checks a packaged version passes before promotion."""

from __future__ import annotations

import pytest

from lookalike.serving.validation import check_signature, self_recall


def test_self_recall_counts_the_product_or_an_identical_image():
    records = [{"query": 0, "rank": 1, "product_id": "a", "distance": 0.0},
               {"query": 1, "rank": 1, "product_id": "x", "distance": 0.0},      # duplicate image
               {"query": 2, "rank": 1, "product_id": "y", "distance": 0.3},      # a miss
               {"query": 2, "rank": 2, "product_id": "c", "distance": 0.4}]
    assert self_recall(records, ["a", "b", "c", "d"]) == pytest.approx(0.5)   # d: no answer


def test_signature_check_names_what_is_wrong():
    from mlflow.models import infer_signature

    good = infer_signature(
        {"image": ["x"], "product_id": ["p"]},
        {"query": [0], "rank": [1], "product_id": ["p"], "category": ["c"], "title": ["t"],
         "distance": [0.1], "group_id": ["p"]}, params={"k": 10})
    assert check_signature(good, {"k": 10}) == []
    problems = check_signature(infer_signature({"pixels": [1.0]}, {"query": [0]}), {"k": 10})
    assert any("inputs" in p for p in problems) and any("outputs lack" in p for p in problems)
    assert any("params lack" in p for p in problems)
    assert check_signature(None, {}) == ["the model has no signature"]


@pytest.mark.slow
def test_validation_in_a_fresh_uv_environment_gates_promotion(packaged_model):
    """The real checks on the packaged champion, the prediction made in a new uv environment
    built from the model's requirements; then a too-strict latency bound fails the version and
    promotion refuses it."""
    import mlflow
    from mlflow.utils import env_manager as managers

    if not hasattr(managers, "UV"):
        pytest.skip(f"MLflow {mlflow.__version__} has no uv env_manager (DBR 15.4: 2.13.1)")

    from lookalike.registry import VALIDATION_TAG, promote
    from lookalike.serving.validation import validate_version

    settings, version = packaged_model.settings, packaged_model.version
    result = validate_version(settings, version, env_manager="uv")
    assert result["passed"], result["checks"]
    assert result["checks"]["fresh_environment"] == "ok"
    assert result["validation_self_recall_at_1"] >= settings.validation.min_self_recall
    client = mlflow.MlflowClient()
    registered = client.get_model_version(settings.registry.model_name, str(version))
    assert registered.tags[VALIDATION_TAG].startswith("passed")
    logged = client.get_run(registered.run_id).data
    assert logged.metrics["validation_passed"] == 1.0
    assert logged.tags["lookalike.validation_env_manager"] == "uv"

    strict = settings.replace(validation={"max_latency_p50_ms": 0.001})
    failed = validate_version(strict, version, env_manager="local")
    assert not failed["passed"] and "p50" in failed["checks"]["latency"]
    tag = client.get_model_version(settings.registry.model_name, str(version)).tags
    assert tag[VALIDATION_TAG].startswith("failed: latency")
    refused = promote(settings, version=version)
    assert not refused["promoted"]
    validate_version(settings, version, env_manager="local")       # leave it valid again

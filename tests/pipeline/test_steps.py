"""The pipeline's steps and their command-line wiring."""

from __future__ import annotations

from lookalike import cli
from lookalike.pipeline.engine import fingerprint
from lookalike.pipeline.steps import default_steps


def test_default_steps_are_the_documented_order():
    names = [s.name for s in default_steps()]
    assert names == ["ingest", "tune", "train", "evaluate", "embed", "build-index", "package",
                     "validate", "promote"]
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})


def test_cli_wires_pipeline_and_demo_options():
    args = cli.parse(["pipeline", "--force", "--skip-tuning", "--profile", "quick"])
    assert (args.force, args.skip_tuning, args.profile) == (True, True, "quick")
    args = cli.parse(["demo", "--no-pipeline", "--app-port", "8600"])
    assert (args.no_pipeline, args.app_port) == (True, 8600)


def test_the_photos_profile_uses_the_shops_catalogue_never_fashion_mnist(tmp_path):
    import pytest

    from lookalike.config import load_settings
    from lookalike.pipeline.engine import Context
    from lookalike.pipeline.steps import run_pipeline

    photos = load_settings("photos", {"home": str(tmp_path)})
    assert (photos.image.channels, photos.model.backbone) == (3, "efficientnet_lite1")
    ingest = next(s for s in default_steps() if s.name == "ingest")
    ctx = Context(settings=photos, outputs={})
    assert ingest.enabled(ctx) is False and "lookalike ingest" in ingest.disabled_reason
    assert ingest.enabled(Context(settings=load_settings("quick"), outputs={})) is True
    with pytest.raises(ValueError, match="ingest yours first"):
        run_pipeline(photos)


def test_a_profile_with_tuning_off_skips_tune_and_trains_its_own_values(tmp_path, monkeypatch):
    """The photos profile's values are cross-validated: the pipeline, `lookalike tune` (the
    weekly job's tune task) and training all leave them as they are."""
    import json
    import subprocess
    import sys

    from lookalike.config import load_settings
    from lookalike.learning.training import resolve_params
    from lookalike.learning.tuning import TUNING_OFF
    from lookalike.pipeline.engine import Context

    photos = load_settings("photos", {"home": str(tmp_path)})
    assert photos.tuning.enabled is False
    steps = {s.name: s for s in default_steps()}
    # A tune run an earlier pipeline recorded (tuning on then) is not applied either.
    recorded = {"ingest": {"table_version": 0}, "tune": {"run_id": "an-earlier-search"}}
    ctx = Context(settings=photos, outputs=recorded)
    assert steps["tune"].enabled(ctx) is False
    assert steps["tune"].disabled_reason(ctx) == TUNING_OFF
    assert steps["train"].inputs(ctx)["params_run_id"] is None
    assert steps["train"].inputs(ctx)["tuning_enabled"] is False    # a tuned model retrains
    passed = {}
    monkeypatch.setattr("lookalike.learning.training.train_and_log",
                        lambda settings, **kwargs: passed.update(kwargs) or {"run_id": "r"})
    steps["train"].run(ctx)
    assert passed["params_run_id"] is None
    on = Context(settings=photos.replace(tuning={"enabled": True}), outputs=recorded)
    assert steps["tune"].enabled(on) is True
    assert steps["train"].inputs(on)["params_run_id"] == "an-earlier-search"
    assert "tuning_enabled" not in steps["train"].inputs(on)   # profiles that tune: unchanged
    skipping = Context(settings=on.settings, outputs=recorded, skip_tuning=True)
    assert steps["tune"].disabled_reason(skipping) == "--skip-tuning"
    assert steps["train"].inputs(skipping)["params_run_id"] is None
    # Training ignores a search tuned for exactly these settings, and applies it when on.
    import mlflow

    from lookalike.learning.params import TUNING_KEY_TAG, tuning_key
    from lookalike.tracking import KIND_TAG, configure_mlflow

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):   # restored after the test
        monkeypatch.setenv(name, "")
    configure_mlflow(photos)
    with mlflow.start_run(tags={KIND_TAG: "tune", TUNING_KEY_TAG: tuning_key(photos, 0)}):
        mlflow.log_dict({"learning_rate": 0.002}, "best_params.json")
    assert resolve_params(photos, None, use_tuned=True, products_version=0) == ({}, None)
    assert resolve_params(on.settings, None, True, 0)[0] == {"learning_rate": 0.002}
    # A run named explicitly (lookalike train --params-run-id) is applied even with tuning off.
    search = mlflow.search_runs(output_format="list")[0].info.run_id
    assert resolve_params(photos, search, True, 0) == ({"learning_rate": 0.002}, search)
    # The weekly job's tune task: succeeds, says why, searches nothing (a process of its own:
    # the command line redirects its file descriptors).
    home = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", "tune", "--profile", "photos",
                           "--set", f"home={home}"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"skipped": TUNING_OFF}
    assert not (home / "mlflow.db").exists()

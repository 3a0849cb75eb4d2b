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

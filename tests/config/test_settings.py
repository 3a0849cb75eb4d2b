"""Settings: profiles, environment overrides, and errors that name the bad key."""

import dataclasses

import pytest

from lookalike.catalogue.tables import catalogue_table
from lookalike.cli import main
from lookalike.config import ConfigError, load_settings


def test_base_and_profile_layering():
    base = load_settings(environ={})
    quick = load_settings("quick", environ={})
    assert base.profile == "base" and quick.profile == "quick"
    assert quick.training.steps_per_epoch < base.training.steps_per_epoch
    # The one model key the profile sets; every key it does not mention keeps its base value.
    assert (base.model.proxy_weight, quick.model.proxy_weight) == (0.0, 1.0)
    assert dataclasses.replace(quick.model, proxy_weight=0.0) == base.model
    assert quick.image == base.image and quick.index == base.index


def test_environment_overrides_home_and_single_keys(tmp_path):
    settings = load_settings(environ={"LOOKALIKE_HOME": str(tmp_path),
                                      "LOOKALIKE__TRAINING__EPOCHS": "7",
                                      "LOOKALIKE__INDEX__BACKEND": "exact"})
    assert settings.home_path == tmp_path.resolve()
    assert settings.training.epochs == 7
    assert settings.index.backend == "exact"
    assert settings.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert str(catalogue_table(settings, "products")).startswith(str(tmp_path.resolve() / "warehouse"))


@pytest.mark.parametrize("overrides, key", [
    ({"training": {"learning_rate": "fast"}}, "training.learning_rate"),
    ({"training": {"epochs": 0}}, "training.epochs"),
    ({"model": {"distance": "manhattan"}}, "model.distance"),
    ({"model": {"embedding_from": "logits"}}, "model.embedding_from"),
    ({"model": {"projection_size": -1}}, "model.projection_size"),
    ({"image": {"channels": 2}}, "image.channels"),
    ({"serving": {"port": 70000}}, "serving.port"),
    ({"catalogue": {"split": {"train": 0.9, "val": 0.2, "test": 0.1}}}, "catalogue.split"),
    ({"index": {"bogus": 1}}, "index.bogus"),
    ({"catalogue": {"allowed_formats": ["JPEG", "PSD"]}}, "catalogue.allowed_formats"),
    ({"training": {"finetune_blend": 0.0}}, "training.finetune_blend"),
    ({"training": {"finetune_blend": 1.5}}, "training.finetune_blend"),
    # Blending needs a pretrained start point: base trains its compact CNN from scratch.
    ({"training": {"finetune_blend": 0.5}}, "training.finetune_blend"),
    ({"training": {"finetune_blend": 0.5}, "model": {"pretrained_weights": ""}},
     "training.finetune_blend"),
])
def test_bad_value_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}"):
        load_settings(overrides=overrides, environ={})


def test_unknown_profile_lists_choices():
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*quick"):
        load_settings("nope", environ={})


def test_bad_environment_value_fails_at_start(capsys, monkeypatch):
    monkeypatch.setenv("LOOKALIKE__TRAINING__EPOCHS", "many")
    assert main(["ingest", "--source", "fashion-mnist"]) == 2
    assert "training.epochs" in capsys.readouterr().err

"""Settings: profiles, environment overrides, and errors that name the bad key."""

import dataclasses
import re

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
    warehouse = str(tmp_path.resolve() / "warehouse")
    assert str(catalogue_table(settings, "products")).startswith(warehouse)


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
    ({"training": {"finetune_depth": 0.0}}, "training.finetune_depth"),
    ({"training": {"finetune_depth": 1.5}}, "training.finetune_depth"),
    # Blending needs a pretrained start point: base trains its compact CNN from scratch.
    ({"training": {"finetune_blend": 0.5}}, "training.finetune_blend"),
    ({"training": {"finetune_blend": 0.5}, "model": {"pretrained_weights": ""}},
     "training.finetune_blend"),
    # Found by an audit: accepted, then failing late, obscurely, or not at all.
    ({"model": {"proxy_weight": float("inf")}}, "model.proxy_weight"),
    ({"registry": {"promotion_tolerance": float("inf")}}, "registry.promotion_tolerance"),
    ({"catalogue": {"embeddings_table": "products"}}, "catalogue.products_table"),
    ({"catalogue": {"embeddings_table": "Products"}}, "catalogue.products_table"),
    ({"training": {"learning_rate": 10 ** 400}}, "training.learning_rate"),
    ({"catalogue": {"products_table": "../../tmp/x"}}, "catalogue.products_table"),
    ({"catalogue": {"database": ".."}}, "catalogue.database"),
    ({"catalogue": {"catalog": "a.b"}}, "catalogue.catalog"),
    ({"model": {"backbone": "efficientnet_lite1"}}, "image.channels"),
    ({"model": {"pretrained_weights": "imagenet"}}, "model.pretrained_weights"),  # compact CNN
    ({"model": {"backbone": "mobilenet_v2", "pretrained_weights": "imagenet"}},
     "image.channels"),
    ({"training": {"examples_per_class": 1}}, "training.examples_per_class"),
    ({"training": {"seed": -1}}, "training.seed"),
    ({"serving": {"timeout_seconds": 0}}, "serving.timeout_seconds"),
    ({"serving": {"max_k": 0}}, "serving.max_k"),
    ({"evaluation": {"plot_queries": -1}}, "evaluation.plot_queries"),
    ({"registry": {"promotion_metric": "test_a_map_at_r"}}, "registry.promotion_metric"),
    ({"spark": {"driver_memory": "lots"}}, "spark.driver_memory"),
    ({"deploy": {"workload_type": "HUGE"}}, "deploy.workload_type"),
    ({"deploy": {"endpoint_name": "bad name!"}}, "deploy.endpoint_name"),
    ({"home": " "}, "home"),
    ({"tuning": {"search_space_file": "nope.yaml"}}, "tuning.search_space_file"),
    ({"tuning": {"exclude_from_training": ["epochs"]}}, "tuning.exclude_from_training"),
])
def test_bad_value_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}"):
        load_settings(overrides=overrides, environ={})


def test_unknown_profile_lists_choices():
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*quick"):
        load_settings("nope", environ={})
    # Profiles are names of conf/*.yaml, never paths or the search spaces.
    for name in ("search_space", "../conf/quick"):
        with pytest.raises(ConfigError, match="unknown profile"):
            load_settings(name, environ={})


def test_the_profile_label_comes_only_from_the_profile_chosen():
    """Relabelling base values as another profile would also key tuned parameters to it."""
    with pytest.raises(ConfigError, match="'profile': set by overrides"):
        load_settings(overrides={"profile": "full"}, environ={})
    with pytest.raises(ConfigError, match="'profile': set by environment"):
        load_settings(environ={"LOOKALIKE__PROFILE": "full"})
    assert load_settings(environ={"LOOKALIKE_PROFILE": "full"}).profile == "full"


def test_names_a_workspace_gives_are_accepted():
    """The bundle's dev schema and endpoint carry the user's short name, which the Databricks
    CLI leaves in any script; UC catalogs may hold hyphens."""
    settings = load_settings(overrides={
        "catalogue": {"catalog": "prod-shop", "database": "dev_józef_lookalike"},
        "deploy": {"endpoint_name": "lookalike-dev-józef"}}, environ={})
    assert settings.catalogue.database == "dev_józef_lookalike"


def test_an_environment_key_under_a_value_names_it():
    with pytest.raises(ConfigError, match="'training': the environment sets it to a value"):
        load_settings(environ={"LOOKALIKE__TRAINING": "3", "LOOKALIKE__TRAINING__EPOCHS": "2"})


def test_a_search_space_naming_no_setting_fails_at_load(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rat: {loguniform: [0.001, 0.01]}\n")
    with pytest.raises(ConfigError, match=r"\['learning_rat'\] are not model or training"):
        load_settings(overrides={"tuning": {"search_space_file": str(space)}}, environ={})


@pytest.mark.parametrize("pairs, message", [
    (["training.epochs=[1"], "'training.epochs': expected an integer, got '[1'"),
    (["training=3", "training.epochs=2"], "'training': --set sets it to a value and a key"),
    (["training..epochs=2"], "expects SECTION.KEY=VALUE"),
])
def test_set_values_that_are_not_yaml_name_the_key(pairs, message):
    from lookalike.cli import _overrides

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(overrides=_overrides(pairs), environ={})


def test_backbones_declare_what_they_take():
    from lookalike.learning.backbones import get_backbone

    lite = get_backbone("efficientnet_lite1")
    assert (lite.channels, lite.pretrained) == ((3,), True)
    assert not get_backbone("compact_cnn").pretrained
    photos = load_settings("photos", environ={})   # Lite1, ImageNet, RGB: consistent
    assert photos.image.channels == 3 and photos.model.pretrained_weights == "imagenet"


def test_a_plugin_backbone_that_does_not_declare_its_weights_is_not_second_guessed(tmp_path):
    """Registered the two-argument way (before backbones declared what they take): its own
    weights file, even for grey images, is its business."""
    from lookalike.learning.backbones import register_backbone

    register_backbone("undeclared_net", "a plug-in")(lambda shape, width, settings: None)
    weights = tmp_path / "grey.h5"
    weights.write_bytes(b"")
    settings = load_settings(overrides={"model": {"backbone": "undeclared_net",
                                                  "pretrained_weights": str(weights)}},
                             environ={})
    assert settings.image.channels == 1


def test_bad_environment_value_fails_at_start(capsys, monkeypatch):
    monkeypatch.setenv("LOOKALIKE__TRAINING__EPOCHS", "many")
    assert main(["ingest", "--source", "fashion-mnist"]) == 2
    assert "training.epochs" in capsys.readouterr().err

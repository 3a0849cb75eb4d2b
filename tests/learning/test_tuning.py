"""Tuning: search-space translation, and a real SparkTrials search with nested MLflow runs."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest
import yaml

from lookalike.learning.tuning import build_space, clean_params

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_search_space_yaml_translates_to_hyperopt():
    from hyperopt import pyll

    space = build_space({"learning_rate": {"loguniform": [0.001, 0.01]},
                         "width": {"choice": [8, 16]},
                         "examples_per_class": {"quniform": [4, 8, 2]},
                         "dropout": {"uniform": [0.1, 0.2]}})
    rng = np.random.default_rng(0)
    for _ in range(30):
        sample = clean_params(pyll.stochastic.sample(space, rng=rng))
        assert 0.001 <= sample["learning_rate"] <= 0.01
        assert sample["width"] in (8, 16)
        assert isinstance(sample["examples_per_class"], int) and sample["examples_per_class"] % 2 == 0
        assert 0.1 <= sample["dropout"] <= 0.2


def test_project_search_space_loads():
    from lookalike.config import load_search_space, load_settings

    space = build_space(load_search_space(load_settings()))
    assert "learning_rate" in space and "embedding_size" in space


@pytest.mark.parametrize("bad", [{"x": {"gaussian": [0, 1]}}, {"x": {"choice": []}}, {"x": 3}])
def test_bad_search_space_entries_are_named(bad):
    with pytest.raises(ValueError, match="'x'"):
        build_space(bad)


@pytest.mark.slow
def test_spark_trials_run_in_parallel_as_nested_runs_and_pick_best_val_map(
        training_settings, spark, tmp_path):
    import mlflow

    from lookalike.catalogue.ingest import ingest_fashion_mnist
    from lookalike.learning.training import resolve_params
    from lookalike.learning.tuning import BEST_TRIAL_TAG, TRIAL_KIND, tune
    from lookalike.tracking import KIND_TAG

    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({
        "learning_rate": {"loguniform": [0.0005, 0.005]},
        "embedding_size": {"choice": [16, 32]},
        "steps_per_epoch": {"choice": [6, 10]},
    }))
    # Class-disjoint tuning with protocol (b) on: trials train on neither the unseen nor the
    # validation categories, and ask about the validation categories only.
    settings = training_settings.replace(
        catalogue={"database": f"tune{uuid.uuid4().hex[:8]}"},
        evaluation={"generalisation": True, "unseen_categories": ["Coat", "Bag"]},
        tuning={"search_space_file": str(space_file), "epochs": 1, "objective": "b",
                "validation_categories": ["Shirt", "Sneaker"],
                "max_validation_queries": 50, "max_catalogue_items": 60,
                "exclude_from_training": ["steps_per_epoch"]})
    ingest_fashion_mnist(spark, settings, limit_per_split=400)

    result = tune(settings, max_evals=2, parallelism=2)

    client = mlflow.MlflowClient()
    parent = mlflow.get_run(result["run_id"])
    assert parent.data.tags[KIND_TAG] == "tune" and result["parallelism"] == 2
    children = [mlflow.get_run(r) for r in result["trial_run_ids"]]
    assert len(children) == 2
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags[KIND_TAG] == TRIAL_KIND and child.info.status == "FINISHED"
        assert "val_map_at_r" in child.data.metrics and "learning_rate" in child.data.params
        trained_on = set(child.data.params["trained_on"].split(","))
        assert len(trained_on) == 6 and not trained_on & {"Coat", "Bag", "Shirt", "Sneaker"}
        # 40 val items over 10 classes: the Shirt and Sneaker ones only.
        assert 2 <= child.data.metrics["val_n_queries"] <= 20
        # Every trial searched the same seeded 60 of the train split (tuning.max_catalogue_items).
        assert child.data.metrics["val_catalogue_items"] == 60
    # The two trials overlapped in time: SparkTrials ran them concurrently.
    (s0, e0), (s1, e1) = [(c.info.start_time, c.info.end_time) for c in children]
    assert s0 < e1 and s1 < e0
    best = max(children, key=lambda c: c.data.metrics["val_map_at_r"])
    assert parent.data.tags[BEST_TRIAL_TAG] == best.info.run_id
    assert parent.data.metrics["best_val_map_at_r"] == pytest.approx(
        best.data.metrics["val_map_at_r"])
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                                artifact_path="best_params.json",
                                                dst_path=str(tmp_path / "dl"))
    best_params = json.loads(open(local).read())
    assert best_params["embedding_size"] == int(best.data.params["embedding_size"])
    assert math.isclose(best_params["learning_rate"], float(best.data.params["learning_rate"]),
                        rel_tol=1e-6)
    # Training picks the latest compatible tuning run's best params, minus budget knobs ...
    version = int(parent.data.tags["lookalike.products_version"])
    params, source = resolve_params(settings, None, use_tuned=True, products_version=version)
    assert source == parent.info.run_id and "steps_per_epoch" not in params
    assert params["embedding_size"] == best_params["embedding_size"]
    assert resolve_params(settings, None, use_tuned=False) == ({}, None)
    # ... and never those tuned for another catalogue version, image size or backbone.
    assert resolve_params(settings, None, True, products_version=version + 1) == ({}, None)
    bigger = settings.replace(image={"size": 32})
    assert resolve_params(bigger, None, True, products_version=version) == ({}, None)
    in_distribution = settings.replace(tuning={"objective": "a"})
    assert resolve_params(in_distribution, None, True, products_version=version) == ({}, None)
    # Trials scored another served vector than the one training would serve.
    head = settings.replace(model={"embedding_from": "head"})
    assert resolve_params(head, None, True, products_version=version) == ({}, None)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_tpe_explores_half_the_budget_then_searches():
    from lookalike.learning.tuning import startup_trials

    assert [startup_trials(n) for n in (1, 2, 8, 100)] == [1, 1, 4, 20]


def test_loss_parameters_reach_the_loss(base_settings):
    from lookalike.learning.model import make_loss
    from lookalike.learning.params import apply_params

    tuned = apply_params(base_settings, {"loss_alpha": 3.0, "loss_epsilon": 0.2})
    config = make_loss(tuned).get_config()
    assert (config["alpha"], config["epsilon"], config["beta"]) == (3.0, 0.2, 40.0)


FMNIST = ("Ankle boot", "Bag", "Coat", "Dress", "Pullover", "Sandal", "Shirt", "Sneaker",
          "T-shirt/top", "Trouser")


def test_tuning_never_reads_protocol_b_classes_and_can_be_class_disjoint(base_settings):
    from lookalike.learning.tuning import tuning_plan

    unseen = ["T-shirt/top", "Coat", "Sandal", "Bag"]
    seen = tuple(c for c in FMNIST if c not in unseen)
    # Protocol (b) off: tuning may read everything (objective a: in-distribution).
    off = tuning_plan(base_settings.replace(evaluation={"generalisation": False}), FMNIST)
    assert off.train == off.queries == off.catalogue == FMNIST
    # Protocol (b) on: the unseen classes are invisible to tuning.
    on = base_settings.replace(evaluation={"generalisation": True, "unseen_categories": unseen})
    plan = tuning_plan(on, FMNIST)
    assert plan.train == plan.queries == plan.catalogue == seen
    # Objective b: validation classes leave the trials' training and are the only queries.
    disjoint = on.replace(tuning={"objective": "b", "validation_categories": ["Shirt", "Sneaker"]})
    plan = tuning_plan(disjoint, FMNIST)
    assert plan.queries == ("Shirt", "Sneaker") and plan.catalogue == seen
    assert plan.train == ("Ankle boot", "Dress", "Pullover", "Trouser")
    # A validation category that is held out for protocol (b) is refused, by name.
    with pytest.raises(ValueError, match="Coat"):
        tuning_plan(on.replace(tuning={"objective": "b", "validation_categories": ["Coat"]}),
                    FMNIST)


def test_objective_b_needs_validation_categories():
    from lookalike.config import load_settings

    with pytest.raises(ValueError, match="validation_categories"):
        load_settings("base", {"tuning": {"objective": "b"}})
    with pytest.raises(ValueError, match="objective"):
        load_settings("base", {"tuning": {"objective": "c"}})


def test_trials_of_a_fine_tuning_profile_fine_tune():
    """Issue 21: the photos profile tuned with tuning.epochs == warmup_epochs, so every trial
    trained a head on a frozen backbone, and the pipeline shipped those parameters in a
    fine-tuning run. A trial keeps the profile's proportion, at least one epoch of each."""
    from lookalike.config import ConfigError, load_settings
    from lookalike.learning.tuning import trial_schedule

    photos = load_settings("photos")
    assert photos.training.warmup_epochs > 0
    schedule = trial_schedule(photos)
    assert schedule["epochs"] == photos.tuning.epochs
    assert 1 <= schedule["warmup_epochs"] < schedule["epochs"]
    longer = photos.replace(tuning={"epochs": 6})  # 2 of 12 warm up: 1 of 6
    assert trial_schedule(longer) == {"epochs": 6, "warmup_epochs": 1}
    quick = load_settings("quick")
    assert trial_schedule(quick)["warmup_epochs"] == 0  # nothing to fine-tune
    with pytest.raises(ConfigError, match="tuning.epochs"):
        photos.replace(tuning={"enabled": True, "epochs": 1})
    photos.replace(tuning={"epochs": 1})    # tuning off: no trial, nothing to check


def test_cheaper_trials_take_their_own_steps_per_epoch():
    """Issue 22: the quick profile's trials are shorter than its training epochs (a cap on
    their steps); 0 keeps the training's steps; a negative value is refused, its key named."""
    from lookalike.config import ConfigError, load_settings
    from lookalike.learning.tuning import trial_schedule

    quick = load_settings("quick")
    assert 0 < quick.tuning.steps_per_epoch < quick.training.steps_per_epoch
    assert trial_schedule(quick)["steps_per_epoch"] == quick.tuning.steps_per_epoch
    assert "steps_per_epoch" not in trial_schedule(quick.replace(tuning={"steps_per_epoch": 0}))
    # A cap: a shorter training epoch (a test's, the workspace rehearsal's) stays the shorter.
    assert "steps_per_epoch" not in trial_schedule(quick.replace(training={"steps_per_epoch": 4}))
    for key in ("steps_per_epoch", "max_catalogue_items"):
        with pytest.raises(ConfigError, match=f"tuning.{key}"):
            quick.replace(tuning={key: -1})

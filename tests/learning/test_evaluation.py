"""lookalike.evaluation: protocols (a)/(b) and the raw-pixel baseline on a hand-made case, and
re-evaluation of a real training run."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.config import load_settings
from lookalike.learning.data import SplitArrays
from lookalike.learning.evaluation import evaluate_embedders, raw_pixels


def points_as_images(points, labels) -> SplitArrays:
    """4x4 'images' whose first two pixels are the 2-D point: raw-pixel cosine == point cosine."""
    x = np.zeros((len(points), 4, 4, 1), np.float32)
    x[:, 0, 0, 0] = [p[0] for p in points]
    x[:, 0, 1, 0] = [p[1] for p in points]
    return SplitArrays(x, np.array(labels), np.array([f"p{i}" for i in range(len(points))]))


def stretched(x: np.ndarray) -> np.ndarray:
    """A hand-made 'model': the point with its second coordinate scaled by 10."""
    return np.stack([x[:, 0, 0, 0], 10.0 * x[:, 0, 1, 0]], axis=1)


@pytest.fixture()
def case():
    train = points_as_images([(1, 0), (1, 0.1), (0, 1), (0.1, 1), (-1, 0), (-1, -0.1)],
                             ["A", "A", "B", "B", "C", "C"])
    test = points_as_images([(1, 0.05), (0.9, 0.3), (-1, 0.05)], ["A", "B", "C"])
    settings = load_settings(overrides={"evaluation": {"unseen_categories": ["C"],
                                                       "k_values": [1, 5], "plot_queries": 3}})
    return settings, train, test


def test_hand_made_case_scores_model_and_baseline_for_both_protocols(case, tmp_path):
    settings, train, test = case
    result = evaluate_embedders(settings, train, test, stretched, stretched, out_dir=tmp_path)
    m = result["metrics"]
    # Model: every query's nearest item is right; C's 2nd neighbour is a B -> AP@R 1/2.
    assert m["a_recall_at_1"] == pytest.approx(1.0)
    assert m["a_map_at_r"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["b_recall_at_1"] == pytest.approx(1.0) and m["b_map_at_r"] == pytest.approx(0.5)
    assert m["b_n_queries"] == 1  # only the unseen category C is queried in (b)
    # Raw pixels: the B query (0.9, 0.3) is nearer both A items -> miss at 1, AP@R 0.
    assert m["baseline_a_recall_at_1"] == pytest.approx(2 / 3)
    assert m["baseline_a_recall_at_5"] == pytest.approx(1.0)
    assert m["baseline_a_map_at_r"] == pytest.approx(2 / 3)
    assert m["baseline_b_map_at_r"] == pytest.approx(1.0)
    per_class = result["per_class"]["baseline_a"].set_index("class")
    assert per_class.loc["B", "recall_at_1"] == 0.0 and per_class.loc["A", "recall_at_1"] == 1.0
    assert sorted(p.name for p in result["plots"]) == ["neighbours.png", "projection.png"]
    assert all(p.stat().st_size > 1000 for p in result["plots"])


def test_protocol_b_is_skipped_without_a_model_that_excluded_unseen(case):
    settings, train, test = case
    m = evaluate_embedders(settings, train, test, stretched, None)["metrics"]
    assert "a_map_at_r" in m and "baseline_b_map_at_r" in m
    assert not any(k.startswith("b_") for k in m)


def test_queries_are_capped_by_max_queries(case):
    settings, train, test = case
    capped = settings.replace(evaluation={"max_queries": 2})
    m = evaluate_embedders(capped, train, test, None, None)["metrics"]
    assert m["baseline_a_n_queries"] == 2


def test_baselines_answer_a_sample_of_the_models_queries_when_capped(case):
    settings, train, test = case
    capped = settings.replace(evaluation={"baseline_max_queries": 2})
    m = evaluate_embedders(capped, train, test, stretched, None)["metrics"]
    assert m["a_n_queries"] == 3 and m["baseline_a_n_queries"] == 2
    assert m["baseline_b_n_queries"] == 1  # fewer than the cap: all of them
    with pytest.raises(Exception, match="baseline_max_queries"):
        settings.replace(evaluation={"baseline_max_queries": -1})


def test_raw_pixels_flattens():
    x = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 1)
    assert raw_pixels(x).shape == (2, 9)


def test_evaluate_run_reproduces_the_metrics_logged_by_training(trained_run):
    import mlflow

    from lookalike.learning.evaluation import evaluate_run

    settings, run_id = trained_run
    logged = mlflow.get_run(run_id).data.metrics
    again = evaluate_run(settings, run_id)
    assert again["run_id"] == run_id
    for name in ("a_recall_at_1", "a_map_at_r", "baseline_a_recall_at_1"):
        assert again[name] == pytest.approx(logged[name], abs=1e-6)
    # A trained model must beat chance (10 classes) by far even after 30 steps.
    assert again["a_recall_at_1"] > 0.3


def test_evaluate_run_refuses_a_run_that_is_not_a_training_run(trained_run):
    import mlflow

    from lookalike.learning.evaluation import evaluate_run
    from lookalike.tracking import KIND_TAG, configure_mlflow

    settings, _ = trained_run
    configure_mlflow(settings)
    with mlflow.start_run(tags={KIND_TAG: "not-a-training-run"}) as run:
        pass
    with pytest.raises(ValueError, match="not a 'train' run"):
        evaluate_run(settings, run.info.run_id)


def test_validation_queries_score_protocol_a_apart_from_test(case):
    """Promotion reads ``val_a_*``: scored on the validation split, never on test queries."""
    settings, train, test = case
    val = points_as_images([(0.95, 0.2), (-0.2, 1)], ["B", "B"])   # first one lands among A
    m = evaluate_embedders(settings, train, test, stretched, None, baseline=False,
                           val=val)["metrics"]
    assert m["val_a_recall_at_1"] == pytest.approx(0.5)
    assert m["val_a_n_queries"] == 2
    assert m["a_recall_at_1"] == pytest.approx(1.0)                # test figures unchanged
    without = evaluate_embedders(settings, train, test, stretched, None, baseline=False)
    assert not any(k.startswith("val_") for k in without["metrics"])


def test_unseen_categories_a_catalogue_lacks_are_named_plainly():
    from lookalike.learning.evaluation import unseen_problem

    fmnist = ["T-shirt/top", "Coat", "Sandal", "Bag"]
    message = unseen_problem(fmnist, ["Shoes", "Pants", "Hoodie"])
    assert "has none of evaluation.unseen_categories" in message and "'Pants'" in message
    assert unseen_problem([], ["a", "b"]).startswith("protocol (b) off")
    assert unseen_problem(["a"], ["a", "b", "c"]) is None
    assert "fewer than 2" in unseen_problem(["a", "b"], ["a", "b", "c"])


def test_same_product_retrieval_is_scored_beside_category_retrieval():
    """With group_id, a test photo must find its own product's photos, not just its category:
    here the model's nearest item is always of the right category, but for one query the
    wrong product."""
    train = points_as_images([(1, 0), (1, 0.2), (0.8, 1), (1, 1), (-1, 0), (-1, -0.1)],
                             ["A", "A", "A", "A", "C", "C"])
    train.groups = np.array(["g1", "g1", "g2", "g2", "", ""])
    test = points_as_images([(1, 0.1), (1, 0.15), (-1, 0.05)], ["A", "A", "C"])
    test.groups = np.array(["g1", "g2", "g9"])  # g9 has no photo in train: not a query
    settings = load_settings(overrides={"evaluation": {"unseen_categories": [],
                                                       "k_values": [1, 5]}})
    m = evaluate_embedders(settings, train, test, stretched)["metrics"]
    assert m["a_recall_at_1"] == pytest.approx(1.0)
    assert m["product_n_queries"] == 2
    # (1, 0.15) x10 -> nearest (1, 0.2) of g1, while it shows g2: a product miss.
    assert m["product_recall_at_1"] == pytest.approx(0.5)
    assert m["product_recall_at_5"] == pytest.approx(1.0)
    assert "baseline_product_recall_at_1" in m
    # Without groups, no same-product figures at all.
    plain = evaluate_embedders(settings, points_as_images([(1, 0), (0, 1)], ["A", "B"]),
                               points_as_images([(1, 0.1)], ["A"]), stretched)["metrics"]
    assert not any(name.startswith("product_") for name in plain)


def test_per_class_tables_cannot_run_as_spreadsheet_formulas():
    """Issue 19, item 7: category names reach the per-class CSVs; a name starting with = + -
    @ (or a tab / CR) gets a leading quote so a spreadsheet shows it as text."""
    import pandas as pd

    from lookalike.learning.evaluation import spreadsheet_safe

    table = pd.DataFrame({"category": ["=HYPERLINK(\"x\")", "@SUM(1)", "Shirt", "-2+3"],
                          "recall_at_1": [0.5, 0.25, 1.0, 0.0]})
    safe = spreadsheet_safe(table)
    assert list(safe["category"]) == ["'=HYPERLINK(\"x\")", "'@SUM(1)", "Shirt", "'-2+3"]
    assert list(safe["recall_at_1"]) == [0.5, 0.25, 1.0, 0.0]
    assert table["category"][0].startswith("=")      # the input is left as it was


def test_the_baseline_is_the_strongest_simple_pixel_variant():
    """Issue 21: protocol (b) was 'met' against the weakest pixel baseline (uncentred cosine
    on inverted images). Here every point lies near one ray from the origin, so uncentred
    cosine sees tiny angles; centred on the catalogue's mean, the two classes point opposite
    ways: the baseline reported is a stronger variant than plain pixels."""
    train = points_as_images([(10, 10), (10.5, 10.5), (20, 20.05), (21, 21)],
                             ["A", "A", "B", "B"])
    test = points_as_images([(10.2, 10.25), (20.5, 20.48)], ["A", "B"])
    settings = load_settings(overrides={"evaluation": {"unseen_categories": [],
                                                       "k_values": [1]}})
    m = evaluate_embedders(settings, train, test, None, None)["metrics"]
    variants = {n: m[f"baseline_a_{n}_recall_at_1"]
                for n in ("pixels", "inverted_pixels", "centred_pixels")}
    assert variants["centred_pixels"] == pytest.approx(1.0)
    assert variants["pixels"] < 1.0
    assert m["baseline_a_recall_at_1"] == max(variants.values()) == 1.0
    assert m["baseline_a_variant"] != 0.0  # PIXEL_BASELINES order: pixels first

"""benchmarks/paired_folds.py: a lever's photo folds paired with the reference run's."""

import pytest

from benchmarks.paired_folds import paired


def result(folds, r1s, name="finetuned_features"):
    scores = [{"recall_at_1": r, "recall_at_5": r, "recall_at_10": r, "map_at_r": r}
              for r in r1s]
    return {"finetune_folds": folds,
            "methods": {name: {"per_fold": scores}, "frozen_lite1_240": {"per_fold": scores}}}


def test_only_the_folds_both_runs_scored_are_paired_and_split_runs_join():
    reference = result([0, 1, 2, 3, 4], [0.80, 0.82, 0.78, 0.81, 0.79])
    lever = paired([result([0, 1], [0.83, 0.81]), result([2], [0.80])], reference)
    assert list(lever) == ["finetuned_features"]          # frozen methods are not levers
    features = lever["finetuned_features"]
    assert features["folds"] == [0, 1, 2]
    mean, se = features["recall_at_1"]["paired"]           # +0.03, -0.01, +0.02
    assert mean == pytest.approx(0.0133, abs=1e-4) and se == pytest.approx(0.012, abs=1e-3)
    assert features["recall_at_1"]["reference"] == pytest.approx(0.80)


def test_a_method_the_reference_lacks_is_left_out():
    reference = result([0, 1], [0.8, 0.8])
    assert paired([result([0, 1], [0.9, 0.9], name="finetuned_other")], reference) == {}

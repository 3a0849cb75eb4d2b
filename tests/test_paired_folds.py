"""benchmarks/paired_folds.py: a lever's photo folds paired with the reference run's."""

import json

import pytest

from benchmarks.paired_folds import fold_mismatch, joined, main, paired


def result(folds, r1s, name="finetuned_features"):
    scores = [{"recall_at_1": r, "recall_at_5": r, "recall_at_10": r, "map_at_r": r}
              for r in r1s]
    return {"finetune_folds": folds, "strongest_frozen": "frozen_lite1_240",
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


def test_a_split_lever_run_joins_into_one_row_paired_with_the_strongest_frozen_method():
    frozen = [{"recall_at_1": r, "recall_at_5": r, "recall_at_10": r, "map_at_r": r}
              for r in [0.70, 0.60, 0.65, 0.70, 0.60]]          # scored on all folds by each run
    first, second = result([0, 1], [0.83, 0.81]), result([3], [0.80])
    for run in (first, second):
        run["methods"]["frozen_lite1_240"]["per_fold"] = frozen
    row = joined([first, second])
    assert row["strongest_frozen"] == "frozen_lite1_240"
    features = row["finetuned_features"]
    assert features["folds"] == [0, 1, 3]
    assert features["recall_at_1"]["mean_se"][0] == pytest.approx(0.8133, abs=1e-4)
    # fold 3's frozen score is 0.70 (not fold 2's 0.65): +0.13, +0.21, +0.10
    assert features["recall_at_1"]["paired_vs_frozen"][0] == pytest.approx(0.1467, abs=1e-4)


def test_runs_dealt_into_other_folds_are_refused_not_paired(tmp_path, capsys):
    aware = {**result([0, 1], [0.80, 0.82]), "folds_keep_twins_together": True,
             "fold_sizes": [273, 258]}
    naive = {**result([0, 1], [0.83, 0.81]), "folds_keep_twins_together": False,
             "fold_sizes": [263, 263]}
    (tmp_path / "aware.json").write_text(json.dumps(aware))
    (tmp_path / "naive.json").write_text(json.dumps(naive))
    with pytest.raises(SystemExit, match="folds_keep_twins_together"):
        main([str(tmp_path / "naive.json"), "--against", str(tmp_path / "aware.json")])
    with pytest.raises(SystemExit, match="different folds"):          # nor joined
        main([str(tmp_path / "aware.json"), str(tmp_path / "naive.json")])
    assert main([str(tmp_path / "naive.json")]) == 0                  # no reference: joined only
    out = json.loads(capsys.readouterr().out)
    assert "paired" not in out and out["joined"]["finetuned_features"]["folds"] == [0, 1]


def test_a_run_from_before_naive_folds_counts_as_keeping_twins_together():
    old = result([0, 1], [0.80, 0.82])                        # no folds_keep_twins_together
    aware = {**result([0, 1], [0.83, 0.81]), "folds_keep_twins_together": True}
    naive = {**result([0, 1], [0.83, 0.81]), "folds_keep_twins_together": False}
    assert fold_mismatch({"aware": aware, "old": old}) is None
    assert "True against False" in fold_mismatch({"naive": naive, "old": old})

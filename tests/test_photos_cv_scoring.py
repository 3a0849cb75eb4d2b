"""benchmarks/bench_photos_cv.py's scoring: per-category figures and saved fold vectors."""

import numpy as np
import pytest

from benchmarks.bench_photos_cv import (
    fold_report,
    fold_score,
    inner_split,
    load_vectors,
    per_category,
    save_vectors,
)


def two_categories():
    """Two folds of coats and skirts; fold 1's skirts look like coats (one only faintly
    like a skirt)."""
    coat, skirt = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    vectors = np.stack([coat, coat, skirt, skirt,           # fold 0
                        coat, coat, coat * 0.9 + skirt * 0.1, coat])   # fold 1
    labels = np.array(["coat", "coat", "skirt", "skirt"] * 2)
    fold = np.repeat([0, 1], 4)
    return vectors, labels, fold


def test_a_fold_scores_its_queries_against_the_other_folds():
    vectors, labels, fold = two_categories()
    # Fold 1's skirts are nearest to fold 0's coats: their Recall@1 is 0, the coats' 1.
    assert fold_score(vectors, labels, fold, 1)["recall_at_1"] == pytest.approx(0.5)
    table = fold_report(vectors, labels, fold, 1).per_class.set_index("class")
    assert table.loc["skirt", "recall_at_1"] == 0.0 and table.loc["coat", "recall_at_1"] == 1.0


def test_categories_pool_every_query_once_weakest_list_first():
    vectors, labels, fold = two_categories()
    pooled = per_category([fold_report(vectors, labels, fold, f).per_class for f in (0, 1)])
    assert list(pooled) == ["skirt", "coat"]                  # skirts miss in fold 1
    assert pooled["skirt"]["n_queries"] == 4
    # Fold 0's two skirts find fold 1's faint skirt first (Recall@1 1); fold 1's two find fold
    # 0's coats first and its skirts at rank 3 (Recall@1 0, @5 1): pooled 0.5 and 1.
    assert pooled["skirt"]["recall_at_1"] == 0.5 and pooled["skirt"]["recall_at_5"] == 1.0
    assert pooled["coat"]["recall_at_1"] == 1.0


def test_per_category_weights_each_fold_by_its_queries():
    import pandas as pd

    row = lambda n, r: {"class": "dress", "n_queries": n, "recall_at_1": r,  # noqa: E731
                        "recall_at_5": r, "recall_at_10": r, "map_at_r": r}
    pooled = per_category([pd.DataFrame([row(2, 1.0)]), pd.DataFrame([row(6, 0.5)])])
    assert pooled["dress"]["recall_at_1"] == pytest.approx(0.625)   # (2 + 3) / 8, not 0.75


def test_categories_are_ordered_by_their_list_of_ten_first():
    import pandas as pd

    table = pd.DataFrame([
        {"class": "top", "n_queries": 4, "recall_at_1": 0.25, "recall_at_5": 1.0,
         "recall_at_10": 1.0, "map_at_r": 0.3},
        {"class": "skirt", "n_queries": 4, "recall_at_1": 0.75, "recall_at_5": 0.75,
         "recall_at_10": 0.75, "map_at_r": 0.3}])
    assert list(per_category([table])) == ["skirt", "top"]   # weaker Recall@10, better @1


def test_a_fold_s_vectors_file_names_the_served_share_and_the_others(tmp_path):
    from benchmarks.bench_photos_cv import vectors_file

    # Served 0.8 scoring 1, and served 1 scoring 0.8: the same two shares, different vectors.
    assert vectors_file(tmp_path, 0.8, (0.8, 1.0)) != vectors_file(tmp_path, 1.0, (0.8,))
    assert vectors_file(tmp_path, 0.8, (1.0,)) == vectors_file(tmp_path, 0.8, (0.8, 1.0))
    assert vectors_file(tmp_path, 0.8, ()).name == "vectors-served0.8-blends-none.npz"


def test_saved_fold_vectors_come_back_whole_with_their_timings(tmp_path):
    vectors = {"features": np.eye(3, dtype=np.float32), "head": np.ones((3, 2))}
    path = tmp_path / "vectors-blends-0.8-1.npz"
    save_vectors(path, vectors, {"train_seconds": 12.5})
    assert not list(tmp_path.glob("*.partial*"))
    loaded, timing = load_vectors(path)
    assert set(loaded) == {"features", "head"}
    np.testing.assert_array_equal(loaded["features"], vectors["features"])
    assert timing == {"train_seconds": 12.5, "vectors_saved_by_an_earlier_run": True}


def test_a_rerun_with_more_shares_reuses_the_file_holding_most_of_them(tmp_path):
    from benchmarks.bench_photos_cv import earlier_vectors, vectors_file

    base = {name: np.eye(2) for name in ("head", "head_mirror", "features", "features_mirror")}
    one = np.ones((2, 2))
    save_vectors(vectors_file(tmp_path, 0.8, (0.5,)), {**base, "features_blend0.5": one},
                 {"train_seconds": 1.0})
    # Sorts after the first file, and holds more of the shares asked for below.
    save_vectors(vectors_file(tmp_path, 0.8, (0.6, 0.7, 1.0)),
                 {**base, "features_blend0.6": one, "features_blend0.7": one,
                  "features_blend1": one}, {"train_seconds": 2.0})
    save_vectors(vectors_file(tmp_path, 1.0, (0.5, 0.6, 0.7)),   # another served share
                 {**base, **{f"features_blend{b}": one for b in (0.5, 0.6, 0.7)}},
                 {"train_seconds": 3.0})
    vectors, timing = earlier_vectors(tmp_path, 0.8, [0.5, 0.6, 0.7])
    assert timing["train_seconds"] == 2.0
    # 1 was not asked for; 0.5 is left for the caller to embed.
    assert set(vectors) == set(base) | {"features_blend0.6", "features_blend0.7"}
    assert earlier_vectors(tmp_path, 0.6, [1.0]) == ({}, {})


def test_centring_removes_the_direction_every_photo_shares():
    from benchmarks.bench_photos_cv import centred, chained, expansion

    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 20)
    vectors = np.eye(16)[np.repeat([1, 2, 3], 20)] + rng.normal(0, 0.6, (60, 16))
    fold = np.tile([0, 1], 30)
    shifted = vectors + 25.0 * np.eye(16)[0]          # a direction every photo has, swamping
    score = lambda v, t=None: [fold_score(v, labels, fold, f, t) for f in (0, 1)]  # noqa: E731
    # Plain cosine drowns in the shared direction; centred cosine does not see it at all.
    assert score(shifted) != score(vectors)
    assert score(shifted, centred) == score(vectors, centred)
    catalogue = vectors[fold == 1]
    moved = centred(catalogue, catalogue)
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(moved.mean(axis=0) @ moved.mean(axis=0), 0.0, atol=1e-2)
    # Queries move by the catalogue's mean, not their own.
    queries = vectors[fold == 0]
    expected = queries - catalogue.mean(axis=0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(centred(queries, catalogue), expected, rtol=1e-5, atol=1e-6)
    # Chained with DBA and QE: the catalogue is centred, then augmented; each query is
    # centred, then expanded with its neighbours in that augmented catalogue.
    both = expansion(2, 2, 1.0)
    chain = chained(centred, both)
    np.testing.assert_allclose(chain(catalogue, catalogue), both(moved, moved), rtol=1e-5)
    np.testing.assert_allclose(chain(queries, catalogue), both(expected, moved), rtol=1e-4,
                               atol=1e-6)
    assert chained(None, both) is both and chained(centred, None) is centred


def coats_and_a_coat_like_skirt():
    """Fold 0: twelve coats along one direction, two skirts along another; fold 1: two coats
    and a skirt photographed like a coat (nearer every coat than either skirt)."""
    rng = np.random.default_rng(1)
    coat, skirt = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    coats = coat + rng.normal(0, 0.05, (12, 3))
    vectors = np.vstack([coats, [skirt, skirt + [0.2, 0, 0]],
                         [coat, coat + [0, 0, 0.1], coat + 0.3 * skirt]])
    labels = np.array(["coat"] * 12 + ["skirt"] * 2 + ["coat", "coat", "skirt"])
    fold = np.array([0] * 14 + [1, 1, 1])
    return vectors, labels, fold


def test_a_category_cap_spends_the_tenth_place_on_another_category():
    from benchmarks.bench_photos_cv import category_cap, precision_at_10
    from lookalike.vectors import l2_normalise as unit

    vectors, labels, fold = coats_and_a_coat_like_skirt()
    plain = fold_report(vectors, labels, fold, 1).per_class.set_index("class")
    capped = fold_report(vectors, labels, fold, 1, rule=category_cap(9)).per_class.set_index(
        "class")
    # Ten coats answer the coat-like skirt: no skirt in its list until one coat gives way.
    assert plain.loc["skirt", "recall_at_10"] == 0.0 and capped.loc["skirt", "recall_at_10"] == 1.0
    # The price: each coat's list shows nine coats, not ten.
    assert precision_at_10(vectors, labels, fold, 1) == pytest.approx(20 / 30, abs=1e-4)
    assert precision_at_10(vectors, labels, fold, 1, rule=category_cap(9)) == pytest.approx(
        19 / 30, abs=1e-4)   # 9 + 9 + 1 of 30
    # The list is a reordering of the whole catalogue: nothing lost, nothing twice, and the
    # first answer unchanged.
    queries, catalogue = vectors[fold == 1], vectors[fold == 0]
    order = category_cap(9)(labels[fold == 0])(unit(queries), unit(catalogue), 14, "cosine")
    assert sorted(order[2].tolist()) == list(range(14))
    nearest = np.argmax(unit(queries) @ unit(catalogue).T, axis=1)
    np.testing.assert_array_equal(order[:, 0], nearest)
    # After the first ten, the rest keep their distance order.
    rest = order[2, 10:]
    similarity = (unit(queries) @ unit(catalogue).T)[2, rest]
    assert np.all(np.diff(similarity) <= 1e-12)
    # Lists shorter than ten, and longer than the catalogue, as the exact search gives them.
    cap = category_cap(9)(labels[fold == 0])
    assert cap(unit(queries), unit(catalogue), 3, "cosine").shape == (3, 3)
    assert cap(unit(queries), unit(catalogue), 50, "cosine").shape == (3, 14)
    with pytest.raises(ValueError, match="cosine"):
        cap(unit(queries), unit(catalogue), 3, "euclidean")


def test_precision_at_10_is_cosine_after_the_fold_transform():
    from benchmarks.bench_photos_cv import category_cap, centred, precision_at_10

    vectors, labels, fold = coats_and_a_coat_like_skirt()
    # Cosine: a skirt ten times as long is no nearer (a raw dot product would rank it first).
    longer = vectors * np.where(labels == "skirt", 10.0, 1.0)[:, None]
    for rule in (None, category_cap(9)):
        assert precision_at_10(longer, labels, fold, 1, rule=rule) == precision_at_10(
            vectors, labels, fold, 1, rule=rule)
    # The transform is applied before the search: centred on the catalogue's mean (mostly
    # coat), the coat-like skirt finds the skirts first.
    moved = precision_at_10(vectors, labels, fold, 1, centred)
    queries, catalogue = vectors[fold == 1], vectors[fold == 0]
    by_hand = np.vstack([centred(catalogue, catalogue), centred(queries, catalogue)])
    assert moved == precision_at_10(by_hand, labels, fold, 1)
    assert moved != precision_at_10(vectors, labels, fold, 1)


def test_a_category_vote_moves_a_list_to_the_category_its_neighbours_agree_on():
    from benchmarks.bench_photos_cv import category_vote

    at = lambda degrees: np.stack([np.cos(np.radians(degrees)),  # noqa: E731
                                   np.sin(np.radians(degrees))], axis=-1)
    catalogue = at(np.array([8.0, 13.0, 14.0, 15.0, 90.0]))     # 2 degrees from the query,
    cat_labels = np.array(["coat", "skirt", "skirt", "skirt", "skirt"])  # then 3, 4, 5
    query = at(np.array([10.0]))
    plain = np.argsort(-(query @ catalogue.T), axis=1)[0]
    assert cat_labels[plain[0]] == "coat"               # the single nearest is a coat ...
    voted = category_vote(4, 0.1, 1.0, 0.0)(cat_labels)(query, catalogue, 5, "cosine")[0]
    assert cat_labels[voted[0]] == "skirt"              # ... its next three nearest agree
    assert sorted(voted.tolist()) == list(range(5))
    # Weight 0 is plain cosine; dividing by the category's count (prior_power 1) turns it back.
    np.testing.assert_array_equal(
        category_vote(4, 0.1, 0.0, 0.0)(cat_labels)(query, catalogue, 5, "cosine")[0], plain)
    assert cat_labels[category_vote(4, 0.1, 1.0, 1.0)(cat_labels)(
        query, catalogue, 5, "cosine")[0][0]] == "coat"


def test_vote_shares_weigh_nearness_by_the_temperature_and_count_only_the_nearest():
    from benchmarks.bench_photos_cv import vote_shares

    # One coat at cosine 1, three skirts at 0.5, then a hat beyond the four nearest.
    similarity = np.array([[1.0, 0.5, 0.5, 0.5, 0.4]])
    codes = np.array([0, 1, 1, 1, 2])
    warm = vote_shares(similarity, codes, 4, 1.0, 0.0)[0]
    coat = 1 / (1 + 3 * np.exp(-0.5))
    np.testing.assert_allclose(warm, [coat, 1 - coat, 0.0])           # the hat has no vote
    cold = vote_shares(similarity, codes, 4, 0.05, 0.0)[0]
    assert cold[0] > 0.999                                            # the nearest decides
    # Divided by catalogue counts (1 coat, 3 skirts) to the power 1: a vote per coat, per skirt.
    fair = vote_shares(similarity, codes, 4, 1.0, 1.0)[0]
    np.testing.assert_allclose(fair, [1 / (1 + np.exp(-0.5)), 1 - 1 / (1 + np.exp(-0.5)), 0.0])
    # Temperatures far below what float32 exp(cosine / T) survives stay finite.
    assert np.isfinite(vote_shares(similarity.astype(np.float32), codes, 4, 1e-4, 0.5)).all()


def test_list_rules_are_named_by_their_settings_and_use_them():
    from benchmarks.bench_photos_cv import category_vote, list_rules

    rules = list_rules("9,8", "10:0.05:0.3:0.5")
    assert list(rules) == ["cap9", "cap8", "vote10_t0.05_w0.3_p0.5"]
    assert list_rules("", "") == {}
    rng = np.random.default_rng(3)
    catalogue = rng.normal(size=(40, 4))
    catalogue /= np.linalg.norm(catalogue, axis=1, keepdims=True)
    queries, cat_labels = catalogue[:8] + rng.normal(0, 0.3, (8, 4)), rng.integers(0, 4, 40)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    lists = lambda rule: rule(cat_labels)(queries, catalogue, 20, "cosine")  # noqa: E731
    np.testing.assert_array_equal(lists(rules["vote10_t0.05_w0.3_p0.5"]),
                                  lists(category_vote(10, 0.05, 0.3, 0.5)))
    assert (lists(rules["vote10_t0.05_w0.3_p0.5"]) != lists(category_vote(10, 0.3, 0.05, 0.5))
            ).any()



def test_tuning_s_inner_split_keeps_twins_together_and_stays_inside_the_fold():
    # Near-twin pairs of 3 categories in blocks (10 coat, 5 skirt, 15 top pairs); the fold's
    # training rows are all but the first 2 coat pairs.
    pairs = np.repeat(["coat", "skirt", "top"], [10, 5, 15])
    labels, components = np.repeat(pairs, 2), np.repeat(np.arange(len(pairs)), 2)
    rows = np.arange(4, 60)
    train, val = inner_split(rows, labels, components, seed=0, parts=4)
    assert sorted(np.concatenate([train, val])) == list(rows)        # nothing from outside
    assert not set(components[train]) & set(components[val])       # twins on one side
    # Every category spread: a quarter of its pairs (8, 5, 15 pairs: 2, 1-2, 3-4) in val.
    per_category = {c: int(np.sum(labels[val] == c)) // 2 for c in ("coat", "skirt", "top")}
    assert per_category["coat"] == 2 and 1 <= per_category["skirt"] <= 2
    assert 3 <= per_category["top"] <= 4

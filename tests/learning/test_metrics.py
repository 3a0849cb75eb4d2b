"""Retrieval metrics against hand-computed values and a naive reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lookalike.learning.metrics import (
    RetrievalReport,
    exact_knn_func,
    retrieval_metrics,
)


def col(*xs: float) -> np.ndarray:
    """1-D points as an (n, 1) embedding matrix."""
    return np.array(xs, dtype=np.float32)[:, None]


CATALOGUE = col(0, 1, 2, 10, 11, 12)


CATALOGUE_LABELS = ["A", "B", "A", "B", "B", "A"]


def test_recall_and_map_at_r_by_hand():
    # q=0.1 (A): ranking A B A B B A      -> hit@1, AP = (1 + 2/3)/3 = 5/9
    # q=10.6 (B): ranking B B A A B A     -> hit@1, AP = (1 + 1)/3   = 2/3
    # q=1.9 (B): ranking A B A B B A      -> miss@1, hit@2, AP = (1/2)/3 = 1/6
    # q=5 (C): no C in the catalogue      -> skipped
    report = retrieval_metrics(
        col(0.1, 10.6, 1.9, 5.0), ["A", "B", "B", "C"], CATALOGUE, CATALOGUE_LABELS,
        k_values=(1, 2, 5), distance="l2",
    )
    assert isinstance(report, RetrievalReport)
    assert report.recall_at_k == pytest.approx({1: 2 / 3, 2: 1.0, 5: 1.0})
    assert report.map_at_r == pytest.approx((5 / 9 + 2 / 3 + 1 / 6) / 3)
    # MAP@R punishes the badly ordered tail that recall@2 ignores.
    assert report.map_at_r < report.recall_at_k[2]
    assert (report.n_queries, report.n_skipped) == (3, 1)

    table = report.per_class.set_index("class")
    assert list(report.per_class.columns) == ["class", "n_queries", "recall_at_1", "recall_at_2", "recall_at_5", "map_at_r"]
    assert table.loc["A", "n_queries"] == 1 and table.loc["B", "n_queries"] == 2
    assert table.loc["A", "recall_at_1"] == pytest.approx(1.0)
    assert table.loc["B", "recall_at_1"] == pytest.approx(0.5)
    assert table.loc["A", "map_at_r"] == pytest.approx(5 / 9)
    assert table.loc["B", "map_at_r"] == pytest.approx((2 / 3 + 1 / 6) / 2)
    assert "C" not in table.index

    flat = report.as_flat_dict(prefix="test_")
    assert flat == pytest.approx({
        "test_recall_at_1": 2 / 3, "test_recall_at_2": 1.0, "test_recall_at_5": 1.0,
        "test_map_at_r": (5 / 9 + 2 / 3 + 1 / 6) / 3,
    })
    assert set(report.as_flat_dict()) == {"recall_at_1", "recall_at_2", "recall_at_5", "map_at_r"}


LOO = col(0, 1.2, 2, 10, 11, 12.5)


LOO_LABELS = np.array([0, 0, 1, 1, 0, 1])


LOO_AP = np.array([1 / 2, 1 / 4, 0, 1 / 4, 0, 1 / 4])


def test_leave_one_out_excludes_self():
    report = retrieval_metrics(LOO, LOO_LABELS, LOO, LOO_LABELS, k_values=(1, 3, 5), distance="l2", exclude_self=True)
    assert report.recall_at_k == pytest.approx({1: 1 / 6, 3: 5 / 6, 5: 1.0})
    assert report.map_at_r == pytest.approx(LOO_AP.mean())
    table = report.per_class.set_index("class")
    assert table.loc[0, "map_at_r"] == pytest.approx(LOO_AP[[0, 1, 4]].mean())
    assert table.loc[1, "recall_at_3"] == pytest.approx(1.0)

    # Without exclusion every item finds itself first.
    naive = retrieval_metrics(LOO, LOO_LABELS, LOO, LOO_LABELS, k_values=(1,), distance="l2")
    assert naive.recall_at_k[1] == 1.0


def test_self_indices_for_query_subset_of_catalogue():
    report = retrieval_metrics(
        LOO[[1, 4]], LOO_LABELS[[1, 4]], LOO, LOO_LABELS, k_values=(1, 3), distance="l2",
        self_indices=np.array([1, 4]),
    )
    assert report.recall_at_k == pytest.approx({1: 0.0, 3: 0.5})
    assert report.map_at_r == pytest.approx((1 / 4 + 0) / 2)
    with pytest.raises(ValueError):
        retrieval_metrics(LOO, LOO_LABELS, LOO, LOO_LABELS, exclude_self=True, self_indices=np.arange(6))


def test_cosine_ignores_vector_length_but_l2_does_not():
    # "a" points the same way as the query but is 100x longer; "b" is close but 27 degrees off.
    cat = np.array([[100.0, 0.0], [0.9, 0.5]])
    query = np.array([[1.0, 0.1]])
    cosine = retrieval_metrics(query, ["a"], cat, ["a", "b"], k_values=(1,))
    l2 = retrieval_metrics(query, ["a"], cat, ["a", "b"], k_values=(1,), distance="l2")
    assert cosine.as_flat_dict() == {"recall_at_1": 1.0, "map_at_r": 1.0}
    assert l2.as_flat_dict() == {"recall_at_1": 0.0, "map_at_r": 0.0}


def naive_metrics(q, ql, c, cl, ks, distance):
    """Reference: full distance matrix and full sort, one query at a time."""
    if distance == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
        d = 1 - q @ c.T
    else:
        d = ((q[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    recall = {k: [] for k in ks}
    aps = []
    for i in range(len(q)):
        rel = cl[np.argsort(d[i], kind="stable")] == ql[i]
        r = rel.sum()
        if r == 0:
            continue
        for k in ks:
            recall[k].append(rel[:k].any())
        prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        aps.append((prec * rel[:r]).sum() / r)
    return {k: np.mean(v) for k, v in recall.items()}, np.mean(aps)


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_chunked_search_matches_naive_reference(distance):
    rng = np.random.default_rng(3)
    c = rng.normal(size=(300, 8)) + np.repeat(rng.normal(size=(6, 8)) * 2, 50, axis=0)
    cl = np.repeat(np.arange(6), 50)
    cl[rng.choice(300, 40, replace=False)] = 7  # imbalanced extra class
    q = c[rng.choice(300, 97, replace=False)] + 0.3 * rng.normal(size=(97, 8))
    ql = cl[rng.choice(300, 97)]
    want_recall, want_map = naive_metrics(q, ql, c, cl, (1, 5, 10), distance)
    for batch_size, block in [(1024, 4_000_000), (7, 900), (1, 1)]:
        got = retrieval_metrics(q, ql, c, cl, (1, 5, 10), distance, batch_size=batch_size,
                                knn_func=exact_knn_func(block))
        assert got.recall_at_k == pytest.approx(want_recall)
        assert got.map_at_r == pytest.approx(want_map)


def test_batches_on_threads_score_exactly_as_one_at_a_time():
    rng = np.random.default_rng(11)
    c = rng.normal(size=(400, 8)).round(1)  # rounded: many exact ties
    cl = rng.integers(0, 6, size=400)
    serial = retrieval_metrics(c, cl, c, cl, exclude_self=True, batch_size=9, threads=1)
    for threads in (2, 5):
        threaded = retrieval_metrics(c, cl, c, cl, exclude_self=True, batch_size=9,
                                     threads=threads)
        assert threaded.recall_at_k == serial.recall_at_k
        assert threaded.map_at_r == serial.map_at_r
        pd.testing.assert_frame_equal(threaded.per_class, serial.per_class)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="distance"):
        retrieval_metrics(LOO, LOO_LABELS, LOO, LOO_LABELS, distance="dot")
    with pytest.raises(ValueError, match="equal length"):
        retrieval_metrics(LOO[:2], LOO_LABELS[:2], LOO, LOO_LABELS, exclude_self=True)
    with pytest.raises(ValueError, match="k_values"):
        retrieval_metrics(LOO, LOO_LABELS, LOO, LOO_LABELS, k_values=(0,))


def test_distance_ties_broken_by_catalogue_order():
    # Both catalogue points are exactly 1 away from the query.
    first_wrong = retrieval_metrics(col(1.0), ["A"], col(0, 2), ["B", "A"], k_values=(1,), distance="l2")
    first_right = retrieval_metrics(col(1.0), ["A"], col(2, 0), ["A", "B"], k_values=(1,), distance="l2")
    assert (first_wrong.recall_at_k[1], first_right.recall_at_k[1]) == (0.0, 1.0)


def test_ties_past_the_partition_go_to_the_lower_catalogue_row():
    # 40 catalogue items at the same distance: argpartition alone picks any 5 of them; the
    # first 5 rows must win. Only rows 0-4 are labelled A, so recall@5 and AP depend on it.
    catalogue = np.ones((40, 2))
    labels = ["A"] * 5 + ["B"] * 35
    report = retrieval_metrics(np.ones((1, 2)), ["A"], catalogue, labels, k_values=(5,))
    assert report.recall_at_k[5] == 1.0 and report.map_at_r == 1.0


def test_neighbour_search_is_pluggable():
    """An ANN index scored through knn_func gives the exact figures when it is exact enough."""
    from lookalike.index import make_index

    rng = np.random.default_rng(5)
    c = rng.normal(size=(500, 16)).astype(np.float32)
    cl = rng.integers(0, 5, size=500)
    calls = []

    def index_knn(queries, catalogue, k, distance):
        calls.append(k)
        index = make_index("hnsw", catalogue.shape[1], distance, m=32, ef_search=400)
        index.add([str(i) for i in range(len(catalogue))], catalogue, ["all"] * len(catalogue))
        return np.array([[int(i) for i, _ in row] for row in index.search(queries, k)])

    exact = retrieval_metrics(c[:50], cl[:50], c, cl, self_indices=np.arange(50))
    ann = retrieval_metrics(c[:50], cl[:50], c, cl, self_indices=np.arange(50),
                            knn_func=index_knn)
    assert calls and ann.recall_at_k == pytest.approx(exact.recall_at_k)
    assert ann.map_at_r == pytest.approx(exact.map_at_r, abs=1e-3)

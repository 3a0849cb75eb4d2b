"""Retrieval metrics checked against hand-computed values, plus plot smoke/colour checks."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from lookalike.metrics import RetrievalReport, pca_2d, plot_neighbour_grid, plot_projection, retrieval_metrics


def col(*xs: float) -> np.ndarray:
    """1-D points as an (n, 1) embedding matrix."""
    return np.array(xs, dtype=np.float32)[:, None]


# --------------------------------------------------------------------------- hand-made cases

# Catalogue on a line: 0 A, 1 B, 2 A, 10 B, 11 B, 12 A  (R_A = R_B = 3)
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


# Leave-one-out set: 0 A, 1.2 A, 2 B, 10 B, 11 A, 12.5 B  (each label has R = 2 others)
LOO = col(0, 1.2, 2, 10, 11, 12.5)
LOO_LABELS = np.array([0, 0, 1, 1, 0, 1])
# Rankings of the other five items and AP@R with R = 2:
#   0   (A): A B B A B -> hit@1, AP = 1/2        1.2 (A): B A B A B -> AP = 1/4
#   2   (B): A A B A B -> hit@3, AP = 0          10  (B): A B B A A -> AP = 1/4
#   11  (A): B B B A A -> hit@5 only, AP = 0     12.5(B): A B B A A -> AP = 1/4
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
        got = retrieval_metrics(q, ql, c, cl, (1, 5, 10), distance, batch_size=batch_size, rank_block_elements=block)
        assert got.recall_at_k == pytest.approx(want_recall)
        assert got.map_at_r == pytest.approx(want_map)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="distance"):
        retrieval_metrics(LOO, LOO_LABELS, LOO, LOO_LABELS, distance="dot")
    with pytest.raises(ValueError, match="equal length"):
        retrieval_metrics(LOO[:2], LOO_LABELS[:2], LOO, LOO_LABELS, exclude_self=True)
    with pytest.raises(ValueError, match="k_values"):
        retrieval_metrics(LOO, LOO_LABELS, LOO, LOO_LABELS, k_values=(0,))


# --------------------------------------------------------------------------- plots


def colour_present(png: np.ndarray, rgb: tuple[float, float, float], tol: float = 0.05) -> bool:
    return bool((np.abs(png[..., :3] - np.array(rgb)) < tol).all(axis=-1).any())


TAB_GREEN = (0x2C / 255, 0xA0 / 255, 0x2C / 255)
TAB_RED = (0xD6 / 255, 0x27 / 255, 0x28 / 255)


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_neighbour_grid_png_marks_matches_green_and_misses_red(tmp_path, channels):
    rng = np.random.default_rng(0)
    shape = (3, 12, 12) if channels is None else (3, 12, 12, channels)
    # Greyscale pixels so the only saturated colours come from the frames.
    queries = rng.random(shape)
    neighbours = rng.random((3, 4) + shape[1:])
    mixed = tmp_path / "mixed.png"
    plot_neighbour_grid(queries, neighbours, np.array([[0, 1, 0, 0]] * 3), np.array([0, 0, 0]), mixed)
    img = imread(mixed)
    assert mixed.stat().st_size > 1000 and img.shape[0] > 100
    assert colour_present(img, TAB_GREEN) and colour_present(img, TAB_RED)

    if channels is None:
        all_match = tmp_path / "match.png"
        plot_neighbour_grid(queries, neighbours, np.zeros((3, 4), int), np.zeros(3, int), all_match,
                            class_names=["shoe", "bag"])
        img = imread(all_match)
        assert colour_present(img, TAB_GREEN) and not colour_present(img, TAB_RED)


def test_pca_projection_recovers_planar_data_and_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(200, 2)) * np.array([5.0, 1.0])
    basis = np.linalg.qr(rng.normal(size=(6, 2)))[0]  # orthonormal 2-D subspace of R^6
    vectors = plane @ basis.T + 3.0
    points, ratio = pca_2d(vectors)
    assert ratio.sum() == pytest.approx(1.0)
    assert ratio[0] > ratio[1]
    # A rotation of the original plane: pairwise distances are preserved.
    d_in = np.linalg.norm(vectors[:50, None] - vectors[None, :50], axis=-1)
    d_out = np.linalg.norm(points[:50, None] - points[None, :50], axis=-1)
    np.testing.assert_allclose(d_out, d_in, atol=1e-8)

    labels = (plane[:, 0] > 0).astype(int)
    path = plot_projection(vectors, labels, tmp_path / "sub" / "pca.png", class_names={0: "left", 1: "right"})
    assert path.exists() and path.stat().st_size > 1000
    assert imread(path).shape[:2] == (600, 700)


def test_distance_ties_broken_by_catalogue_order():
    # Both catalogue points are exactly 1 away from the query.
    first_wrong = retrieval_metrics(col(1.0), ["A"], col(0, 2), ["B", "A"], k_values=(1,), distance="l2")
    first_right = retrieval_metrics(col(1.0), ["A"], col(2, 0), ["A", "B"], k_values=(1,), distance="l2")
    assert (first_wrong.recall_at_k[1], first_right.recall_at_k[1]) == (0.0, 1.0)

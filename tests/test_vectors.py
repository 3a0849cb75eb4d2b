"""The shared exact k-NN and normaliser: against a brute-force reference, ties by row."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.vectors import exact_knn, l2_normalise, prepare


def reference(q, b, k, distance):
    if distance == "cosine":
        d = 1 - l2_normalise(q) @ l2_normalise(b).T
    else:
        d = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    order = np.lexsort((np.broadcast_to(np.arange(len(b)), d.shape), d), axis=1)
    return np.take_along_axis(d, order, axis=1)[:, :k], order[:, :k]


@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("block", [1, 37, 8_000_000])
def test_exact_knn_matches_reference_in_any_block_size(distance, block):
    rng = np.random.default_rng(0)
    base, queries = rng.normal(size=(200, 8)), rng.normal(size=(23, 8))
    d, i = exact_knn(prepare(queries, distance), prepare(base, distance), 10, distance, block)
    want_d, want_i = reference(queries, base, 10, distance)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(d, want_d, atol=1e-5)


def test_ties_beyond_k_go_to_the_lower_rows():
    base = np.ones((50, 3), dtype=np.float32)
    _, i = exact_knn(base[:4], base, 5, "l2")
    assert (i == np.arange(5)).all()


def test_negative_zero_distance_is_nearest_like_zero():
    """The top-k sorts a distance's float bits: -0.0 (sign bit set) must still come first."""
    from lookalike.vectors import _top_k_rows

    d = np.array([[0.5, -0.0, 0.0, 1.0, 0.25]], dtype=np.float32)
    assert _top_k_rows(d, 3).tolist() == [[1, 2, 4]]
    assert _top_k_rows(d, 5).tolist() == [[1, 2, 4, 0, 3]]


def test_prepare_checks_shape_and_values():
    assert prepare(np.ones(4), "cosine", 4, allow_1d=True).shape == (1, 4)
    with pytest.raises(ValueError, match="shape"):
        prepare(np.ones((2, 3)), "l2", 4)
    with pytest.raises(ValueError, match="NaN"):
        prepare(np.array([[np.nan, 1.0]]), "l2")
    with pytest.raises(ValueError, match="distance"):
        prepare(np.ones((1, 2)), "dot")
    np.testing.assert_array_equal(l2_normalise(np.zeros((1, 3))), np.zeros((1, 3)))

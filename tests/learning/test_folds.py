"""lookalike.learning.folds: cross-validation folds that keep twins and products together."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.learning.folds import mean_se, stratified_group_folds, twin_groups


def _unit(x):
    x = np.asarray(x, dtype=float)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_twins_are_linked_transitively_and_products_by_group():
    # 0~1 and 1~2 are near (cosine > 0.99), 0 and 2 less so: one component all the same.
    vectors = _unit([[1, 0, 0], [1, 0.1, 0], [1, 0.2, 0], [0, 1, 0], [0, 0, 1], [0, -1, 0]])
    assert np.dot(vectors[0], vectors[2]) < 0.99
    components = twin_groups(vectors, 0.99)
    assert components[0] == components[1] == components[2]
    assert len({components[3], components[4], components[5]} - {components[0]}) == 3
    # A shared group_id links rows whatever their vectors; "" is no group.
    grouped = twin_groups(vectors, 0.99, np.array(["", "", "", "p", "", "p"]))
    assert grouped[3] == grouped[5] != grouped[4]


def test_folds_keep_components_whole_and_spread_every_category():
    labels = np.repeat(["a", "b", "c"], 40)
    components = np.arange(120)
    components[:6] = 0                        # six twins of category a
    components[40:43] = 40                    # three of b
    folds = stratified_group_folds(labels, components, 5, seed=1)
    for c in (0, 40):
        assert len(set(folds[components == c])) == 1
    for category, largest in (("a", 6), ("b", 3), ("c", 1)):
        counts = np.bincount(folds[labels == category], minlength=5)
        assert counts.min() >= 40 // 5 - largest and counts.max() - counts.min() <= largest, \
            (category, counts)
    # Seeded: the same seed gives the same folds, another seed others.
    assert np.array_equal(folds, stratified_group_folds(labels, components, 5, seed=1))
    assert not np.array_equal(folds, stratified_group_folds(labels, components, 5, seed=2))


def test_mean_and_standard_error():
    assert mean_se([0.5]) == (0.5, 0.0)
    mean, se = mean_se([0.6, 0.8])
    assert mean == pytest.approx(0.7) and se == pytest.approx(0.1)

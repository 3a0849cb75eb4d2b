"""Cross-validation folds a small catalogue can trust: pure functions, numpy only.

Photos of one product, and near-twins (two photos of one garment, or of one shoot), must never
sit on both sides of a split: the query would find its twin and the figure would measure
memory, not similarity. :func:`twin_groups` links them, :func:`stratified_group_folds` deals
whole groups into folds with every category spread evenly, :func:`mean_se` summarises a metric
over folds. Used by ``benchmarks/bench_photos_cv.py``.
"""

from __future__ import annotations

import numpy as np


def twin_groups(vectors: np.ndarray, threshold: float, groups: np.ndarray | None = None
                ) -> np.ndarray:
    """A component id per row: rows linked when their unit ``vectors`` have cosine >=
    ``threshold`` or share a non-empty ``groups`` value, transitively (union-find)."""
    n = len(vectors)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    for start in range(0, n, 512):
        sims = vectors[start:start + 512] @ vectors.T
        for i, j in zip(*np.nonzero(sims >= threshold)):
            if start + i != j:
                join(start + int(i), int(j))
    if groups is not None:
        first: dict[str, int] = {}
        for i, g in enumerate(groups):
            if g:
                join(i, first.setdefault(str(g), i))
    return np.array([root(i) for i in range(n)])


def stratified_group_folds(labels: np.ndarray, components: np.ndarray, folds: int,
                           seed: int) -> np.ndarray:
    """A fold per row: whole components, dealt round-robin per category (a component's
    most common category; larger components first, ties in a seeded order), the deal running
    on from one category to the next. A category's folds then differ by at most its largest
    component's size."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=int)
    ids = np.unique(components)
    majority = {}
    for c in ids:
        values, counts = np.unique(labels[components == c], return_counts=True)
        majority[c] = values[np.argmax(counts)]
    next_fold = 0
    for category in sorted(set(majority.values())):
        members = [c for c in ids if majority[c] == category]
        order = sorted(rng.permutation(members), key=lambda c: -np.sum(components == c))
        for c in order:
            fold[components == c] = next_fold
            next_fold = (next_fold + 1) % folds
    return fold


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for one value)."""
    v = np.asarray(values, dtype=float)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return round(float(v.mean()), 4), round(se, 4)

"""Exact retrieval metrics, as small pure numpy functions.

Metrics follow the metric-learning literature:

* recall@k -- fraction of queries with at least one same-label catalogue item among their k
  nearest neighbours (as in tensorflow-similarity / pytorch-metric-learning), not the IR
  "fraction of relevant items retrieved".
* MAP@R -- Musgrave et al., "A Metric Learning Reality Check" (2020). For a query with R
  same-label catalogue items (the query itself excluded),
  AP@R = (1/R) * sum_{i<=R} P(i) * rel(i), where P(i) is precision in the top i.

The neighbour search is pluggable (``knn_func``, as pytorch-metric-learning's
``AccuracyCalculator`` takes one): by default the exact search of :mod:`lookalike.vectors`, whose
ties in distance go to the lower catalogue row; an ANN index can be scored by passing its own.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from lookalike.runtime import cpu_count
from lookalike.vectors import check_distance, exact_knn, prepare

__all__ = ["RetrievalReport", "retrieval_metrics", "exact_knn_func", "relevance",
           "hits_at_k", "average_precision_at_r", "per_class_table"]

#: ``knn_func(queries, catalogue, k, distance) -> (n_queries, k) catalogue rows, nearest
#: first`` (vectors already prepared: L2-normalised for cosine).
KnnFunc = Callable[[np.ndarray, np.ndarray, int, str], np.ndarray]


@dataclass
class RetrievalReport:
    """Result of :func:`retrieval_metrics`.

    ``n_queries`` counts evaluated queries; ``n_skipped`` counts queries whose label has no
    catalogue item (R = 0): they cannot be answered correctly and, as in
    pytorch-metric-learning, are left out of every average.
    """

    recall_at_k: dict[int, float]
    map_at_r: float
    per_class: pd.DataFrame
    n_queries: int
    n_skipped: int
    distance: str
    k_values: tuple[int, ...] = field(default=())

    def as_flat_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat metric dict for MLflow, e.g. {"recall_at_1": .., "map_at_r": ..}."""
        out = {f"{prefix}recall_at_{k}": float(v) for k, v in sorted(self.recall_at_k.items())}
        out[f"{prefix}map_at_r"] = float(self.map_at_r)
        return out


def exact_knn_func(block_elements: int = 4_000_000) -> KnnFunc:
    """The default neighbour search: exact, ties to the lower catalogue row."""
    def knn(queries, catalogue, k, distance):
        return exact_knn(queries, catalogue, k, distance, block_elements)[1]
    return knn


def self_rows(n_queries: int, n_catalogue: int, exclude_self: bool,
              self_indices: np.ndarray | None) -> np.ndarray:
    """Catalogue row of each query (-1: not in the catalogue), from the two ways to say it."""
    if exclude_self and self_indices is not None:
        raise ValueError("pass either exclude_self or self_indices, not both")
    if exclude_self:
        if n_queries != n_catalogue:
            raise ValueError("exclude_self requires queries and catalogue of equal length")
        return np.arange(n_queries)
    if self_indices is None:
        return np.full(n_queries, -1, dtype=np.int64)
    rows = np.asarray(self_indices, dtype=np.int64)
    if rows.shape != (n_queries,) or rows.max(initial=-1) >= n_catalogue:
        raise ValueError("self_indices must have one catalogue row (or -1) per query")
    return rows


def label_codes(query_labels, catalogue_labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes, query codes, catalogue codes): integer codes for str or int labels."""
    q, c = np.asarray(query_labels), np.asarray(catalogue_labels)
    classes, codes = np.unique(np.concatenate([q, c]), return_inverse=True)
    return classes, codes[:len(q)], codes[len(q):]


def relevant_counts(q_codes: np.ndarray, c_codes: np.ndarray, self_idx: np.ndarray) -> np.ndarray:
    """R per query: same-label catalogue items, the query itself not counted."""
    counts = np.bincount(c_codes, minlength=int(max(q_codes.max(initial=0),
                                                    c_codes.max(initial=0))) + 1)
    has_self = self_idx >= 0
    own = has_self & (c_codes[np.maximum(self_idx, 0)] == q_codes)
    return counts[q_codes] - own


def neighbours_without_self(knn_func: KnnFunc, queries: np.ndarray, catalogue: np.ndarray,
                            depth: int, distance: str, self_idx: np.ndarray) -> np.ndarray:
    """(n, depth) catalogue rows nearest first, each query's own row removed; -1 pads."""
    has_self = bool((self_idx >= 0).any())
    fetch = min(depth + int(has_self), len(catalogue))
    top = np.asarray(knn_func(queries, catalogue, fetch, distance), dtype=np.int64)
    if not has_self:
        return top[:, :depth]
    out = np.full((len(top), depth), -1, dtype=np.int64)
    for row, (neighbours, own) in enumerate(zip(top, self_idx)):
        kept = neighbours[neighbours != own][:depth]
        out[row, :len(kept)] = kept
    return out


def relevance(top: np.ndarray, q_codes: np.ndarray, c_codes: np.ndarray) -> np.ndarray:
    """Boolean (n, depth): neighbour j of query i has the query's label (-1 never does)."""
    return (top >= 0) & (c_codes[np.maximum(top, 0)] == q_codes[:, None])


def hits_at_k(rel: np.ndarray, k_values: Sequence[int]) -> np.ndarray:
    """(n, len(k_values)): at least one relevant item in the top k."""
    return np.stack([rel[:, :k].any(axis=1) for k in k_values], axis=1)


def average_precision_at_r(rel: np.ndarray, r: np.ndarray) -> np.ndarray:
    """AP@R per query (0 where R = 0); ``rel`` must reach at least depth max(R)."""
    ranks = np.arange(1, rel.shape[1] + 1)[None, :]
    precision = np.cumsum(rel, axis=1) / ranks
    within_r = ranks <= r[:, None]
    return (precision * rel * within_r).sum(axis=1) / np.maximum(r, 1)


def per_class_table(classes: np.ndarray, q_codes: np.ndarray, hits: np.ndarray, ap: np.ndarray,
                    k_values: Sequence[int]) -> pd.DataFrame:
    """One row per query class: n_queries, recall_at_k..., map_at_r."""
    rows = []
    for code in np.unique(q_codes):
        m = q_codes == code
        row: dict[str, object] = {"class": classes[code].item(), "n_queries": int(m.sum())}
        row.update({f"recall_at_{k}": float(hits[m, j].mean()) for j, k in enumerate(k_values)})
        row["map_at_r"] = float(ap[m].mean())
        rows.append(row)
    columns = ["class", "n_queries", *(f"recall_at_{k}" for k in k_values), "map_at_r"]
    return pd.DataFrame(rows, columns=columns)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def retrieval_metrics(query_vectors: np.ndarray, query_labels: Sequence | np.ndarray,
                      catalogue_vectors: np.ndarray, catalogue_labels: Sequence | np.ndarray,
                      k_values: Sequence[int] = (1, 5, 10), distance: str = "cosine",
                      exclude_self: bool = False, self_indices: np.ndarray | None = None,
                      batch_size: int = 1024, knn_func: KnnFunc | None = None,
                      threads: int | None = None) -> RetrievalReport:
    """Recall@k and MAP@R of queries against a catalogue (see the module docstring).

    Leave-one-out: ``exclude_self=True`` means query i *is* catalogue item i and is never its
    own neighbour; ``self_indices`` generalises this (entry i: catalogue row of query i, or -1).
    Queries are scored ``batch_size`` at a time on ``threads`` threads (default: every core
    for the exact search, 1 for a ``knn_func`` of the caller's, which may not be thread-safe),
    so ``threads`` batches' neighbour lists (depth max(R, k)) are held at once.
    """
    check_distance(distance)
    k_values = tuple(sorted({int(k) for k in k_values}))
    if not k_values or k_values[0] < 1:
        raise ValueError(f"k_values must be positive integers, got {k_values}")
    q, c = prepare(query_vectors, distance), prepare(catalogue_vectors, distance)
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != catalogue dim {c.shape[1]}")
    if len(query_labels) != len(q) or len(catalogue_labels) != len(c):
        raise ValueError("labels must have one entry per vector")
    if threads is None:
        threads = cpu_count() if knn_func is None else 1
    knn_func = knn_func or exact_knn_func()
    self_idx = self_rows(len(q), len(c), exclude_self, self_indices)
    classes, q_codes, c_codes = label_codes(query_labels, catalogue_labels)
    r = relevant_counts(q_codes, c_codes, self_idx)
    hits = np.zeros((len(q), len(k_values)), dtype=bool)
    ap = np.zeros(len(q), dtype=np.float64)

    def score_batch(start: int) -> None:  # writes only its own rows of hits and ap
        g = slice(start, start + max(1, batch_size))
        depth = int(min(max(r[g].max(initial=0), k_values[-1]), len(c)))
        if depth == 0:  # empty catalogue: every query is skipped below
            return
        top = neighbours_without_self(knn_func, q[g], c, depth, distance, self_idx[g])
        rel = relevance(top, q_codes[g], c_codes)
        hits[g] = hits_at_k(rel, k_values)
        ap[g] = average_precision_at_r(rel, r[g])

    starts = range(0, len(q), max(1, batch_size))
    if int(threads) > 1 and len(starts) > 1:
        # numpy's sorts, partitions and ufuncs release the GIL: batches on threads use every
        # core where one batch at a time used one (the MAP@R depth is the costly part).
        with ThreadPoolExecutor(max_workers=min(int(threads), len(starts))) as pool:
            list(pool.map(score_batch, starts))
    else:
        for start in starts:
            score_batch(start)
    evaluated = r > 0
    return RetrievalReport(
        recall_at_k={k: _mean(hits[evaluated, j]) for j, k in enumerate(k_values)},
        map_at_r=_mean(ap[evaluated]),
        per_class=per_class_table(classes, q_codes[evaluated], hits[evaluated], ap[evaluated],
                                  k_values),
        n_queries=int(evaluated.sum()), n_skipped=int((~evaluated).sum()), distance=distance,
        k_values=k_values)

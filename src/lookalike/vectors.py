"""Vector helpers shared by the ANN index and the retrieval metrics: one normaliser, one exact k-NN.

Distances: ``"cosine"`` is ``1 - cos`` (vectors L2-normalised first, see :func:`prepare`),
``"l2"`` is the euclidean distance. Exact search breaks ties in distance by the lower base row,
so results never depend on how numpy partitions an array.
"""

from __future__ import annotations

import numpy as np

DISTANCES = ("cosine", "l2")


def check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {list(DISTANCES)}")
    return distance


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero (distance 1 to everything), never NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def prepare(vectors: np.ndarray, distance: str, dim: int | None = None,
            allow_1d: bool = False) -> np.ndarray:
    """Validate to a C-contiguous float32 (n, dim) matrix, L2-normalised for cosine."""
    check_distance(distance)
    x = np.asarray(vectors)
    if x.ndim == 1 and allow_1d:
        x = x[None, :]
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        expected = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise ValueError(f"expected vectors of shape {expected}, got {np.shape(vectors)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or inf")
    return np.ascontiguousarray(l2_normalise(x)) if distance == "cosine" else x


def distances(queries: np.ndarray, base: np.ndarray, distance: str,
              base_sq: np.ndarray | None = None) -> np.ndarray:
    """(n_queries, n_base) float32 distances of prepared vectors (see :func:`prepare`)."""
    sims = queries @ base.T
    if distance == "cosine":
        np.subtract(1.0, sims, out=sims)
        return np.clip(sims, 0.0, 2.0, out=sims)
    if base_sq is None:
        base_sq = np.einsum("ij,ij->i", base, base)
    q_sq = np.einsum("ij,ij->i", queries, queries)[:, None]
    sims *= -2.0
    sims += q_sq
    sims += base_sq[None, :]
    return np.sqrt(np.maximum(sims, 0.0, out=sims), out=sims)


def _top_k_rows(d: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the k smallest entries, ordered by (distance, index).

    Each entry becomes one 64-bit key, its distance's float32 bits above its column index: the
    bits of a non-negative float order as the float does, so sorting keys orders by distance,
    then by index, in one pass and without a tie-breaking step (1.5x faster than argpartition
    plus a stable argsort at the depths MAP@R needs).
    """
    n = d.shape[1]
    # Distances are >= 0; -0.0 (whose sign bit would sort it last) becomes +0.0.
    keys = np.add(d, np.float32(0.0), dtype=np.float32).view(np.uint32).astype(np.uint64)
    keys <<= np.uint64(32)
    keys |= np.arange(n, dtype=np.uint64)
    if k < n:
        keys = np.partition(keys, k - 1, axis=1)[:, :k]
    keys.sort(axis=1)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)


def exact_knn(queries: np.ndarray, base: np.ndarray, k: int, distance: str,
              block_elements: int = 8_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest base rows of each query: (distances, indices), nearest first.

    Vectors must be prepared (:func:`prepare`). Shape (n_queries, min(k, n_base)). Queries are
    processed in blocks of at most ``block_elements`` distances (32 MB of float32 by default),
    so memory stays bounded whatever the catalogue size.
    """
    check_distance(distance)
    k = min(int(k), len(base))
    n = len(queries)
    out_d = np.empty((n, k), dtype=np.float32)
    out_i = np.empty((n, k), dtype=np.int64)
    if k <= 0 or n == 0:
        return out_d, out_i
    base_sq = np.einsum("ij,ij->i", base, base) if distance == "l2" else None
    rows = max(1, int(block_elements) // max(1, len(base)))
    for start in range(0, n, rows):
        d = distances(queries[start:start + rows], base, distance, base_sq)
        top = _top_k_rows(d, k)
        out_i[start:start + len(d)] = top
        out_d[start:start + len(d)] = np.take_along_axis(d, top, axis=1)
    return out_d, out_i

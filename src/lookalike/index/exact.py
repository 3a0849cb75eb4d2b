"""Brute-force numpy backend: exact results, O(n) per query; ground truth and small catalogues."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.index.base import VectorIndex
from lookalike.index.registry import register_backend
from lookalike.vectors import exact_knn

VECTORS_FILE = "vectors.npy"


@dataclass(frozen=True)
class ExactParams:
    #: Distances computed per block of queries (memory bound: 4 bytes each).
    block_elements: int = 8_000_000

    def validate(self, key: str) -> None:
        if self.block_elements < 1:
            raise ValueError(f"{key}.block_elements must be >= 1")


@register_backend
class ExactIndex(VectorIndex):
    """Every query compared with every live vector."""

    backend = "exact"
    Params = ExactParams

    def __init__(self, dim: int, distance: str = "cosine", params: ExactParams | None = None,
                 provenance=None):
        super().__init__(dim, distance, params, provenance)
        self._vectors = np.empty((0, self._dim), dtype=np.float32)

    def _append_vectors(self, vectors: np.ndarray) -> None:
        self._vectors = np.concatenate([self._vectors, vectors])

    def _vectors_at(self, slots: np.ndarray) -> np.ndarray:
        return self._vectors[slots]

    def _knn(self, queries, k, mask, n_candidates):
        if n_candidates == len(mask):
            candidates, base = None, self._vectors
        else:
            candidates = np.flatnonzero(mask)
            base = self._vectors[candidates]
        dists, rows = exact_knn(queries, base, k, self._distance, self.params.block_elements)
        return dists, (rows if candidates is None else candidates[rows])

    def _reset_storage(self) -> None:
        self._vectors = np.empty((0, self._dim), dtype=np.float32)

    def _save_storage(self, directory: Path) -> None:
        np.save(directory / VECTORS_FILE, self._vectors)

    def _load_storage(self, directory: Path, n_slots: int) -> None:
        vectors = np.load(directory / VECTORS_FILE, allow_pickle=False)
        if vectors.shape != (n_slots, self._dim):
            raise ValueError(f"{directory}: {VECTORS_FILE} has shape {vectors.shape}")
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)

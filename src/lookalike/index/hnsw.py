"""faiss HNSW backend: the default for serving (sub-millisecond queries at catalogue scale)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from lookalike.index.base import VectorIndex
from lookalike.index.registry import register_backend
from lookalike.vectors import exact_knn

FAISS_FILE = "index.faiss"


@dataclass(frozen=True)
class HnswParams:
    m: int = 32                     # graph degree: recall and memory grow with it
    ef_construction: int = 200      # build beam width
    ef_search: int = 128            # query beam width (raised to k when k is larger)
    # Filters (category, tombstones) leaving at most this many candidates are answered exactly:
    # about 2 ms a query at 20,000 (128-d, 2 cores), where a filtered graph walk over a 1 %
    # category of 1,000,000 items found only 90 % of the true top 10 (docs/benchmarks-history.md).
    filter_brute_force_max: int = 20000
    # ... and only when they keep less than this share of the items: a broad filter (a 20 %
    # category) is answered faster by the graph, at the same recall.
    filter_exact_share: float = 0.05

    #: Parameters that only steer searching: changing them never rebuilds the graph.
    search_time: ClassVar[tuple[str, ...]] = ("ef_search", "filter_brute_force_max",
                                              "filter_exact_share")

    def validate(self, key: str) -> None:
        for name in ("m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"{key}.{name} must be >= 1")
        if self.filter_brute_force_max < 0:
            raise ValueError(f"{key}.filter_brute_force_max must be >= 0")
        if not 0.0 <= self.filter_exact_share <= 1.0:
            raise ValueError(f"{key}.filter_exact_share must be in [0, 1]")


@register_backend
class HnswIndex(VectorIndex):
    """faiss ``IndexHNSWFlat``; faiss internal ids are our slot numbers.

    Params (:class:`HnswParams`): ``m`` (graph degree), ``ef_construction`` (build beam
    width), ``ef_search`` (query beam width; raised to k when k is larger).

    Filtering (tombstones, category) uses a faiss ``IDSelectorBitmap`` passed
    through ``SearchParametersHNSW``: the graph walk still traverses filtered
    nodes but only members enter the result heap. Rows that come back short
    are retried with a wider beam and finally answered exactly, and filters
    leaving at most ``filter_brute_force_max`` candidates are answered exactly
    up front (cheaper than a graph walk that mostly visits non-members).
    """

    backend = "hnsw"
    Params = HnswParams

    def __init__(self, dim: int, distance: str = "cosine", params: HnswParams | None = None,
                 provenance=None):
        super().__init__(dim, distance, params, provenance)
        self._index = self._new_faiss_index()

    @property
    def ef_search(self) -> int:
        return self.params.ef_search

    def _new_faiss_index(self) -> faiss.IndexHNSWFlat:
        # Inner product on normalised vectors == cosine similarity.
        metric = faiss.METRIC_INNER_PRODUCT if self._distance == "cosine" else faiss.METRIC_L2
        index = faiss.IndexHNSWFlat(self._dim, self.params.m, metric)
        index.hnsw.efConstruction = self.params.ef_construction
        index.hnsw.efSearch = self.params.ef_search
        return index

    def _append_vectors(self, vectors: np.ndarray) -> None:
        self._index.add(vectors)

    def _vectors_at(self, slots: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(np.ascontiguousarray(slots, dtype=np.int64))

    def _to_distance(self, raw: np.ndarray) -> np.ndarray:
        if self._distance == "cosine":
            return np.clip(1.0 - raw, 0.0, 2.0).astype(np.float32)
        return np.sqrt(np.maximum(raw, 0.0)).astype(np.float32)

    def _hnsw_search(
        self, queries: np.ndarray, k: int, ef: int, selector: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        # Per-call params (not index.hnsw.efSearch) keep search free of mutation.
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef, k)
        if selector is not None:
            params.sel = selector
        raw, slots = self._index.search(queries, k, params=params)
        return raw, slots

    def _exact_rows(self, queries: np.ndarray, k: int, mask: np.ndarray):
        candidates = np.flatnonzero(mask)
        dists, rows = exact_knn(queries, self._vectors_at(candidates), k, self._distance)
        return dists, candidates[rows]

    def _knn(self, queries, k, mask, n_candidates):
        filtered = n_candidates < len(mask)
        if (filtered and n_candidates <= self.params.filter_brute_force_max
                and n_candidates <= self.params.filter_exact_share * len(mask)):
            return self._exact_rows(queries, k, mask)
        selector = bitmap = None
        if filtered:
            # faiss reads bit i as (bitmap[i >> 3] >> (i & 7)) & 1, i.e. little-endian
            # bit order. The selector only borrows the buffer: keep `bitmap` alive.
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        raw, slots = self._hnsw_search(queries, k, self._filtered_ef(k, n_candidates, len(mask)),
                                       selector)
        dists = self._to_distance(raw)
        short = np.flatnonzero((slots >= 0).sum(axis=1) < k)
        if len(short):
            # A filtered walk can exhaust its beam before finding k members.
            raw2, slots2 = self._hnsw_search(queries[short], k, max(4 * self.ef_search, 4 * k), selector)
            dists[short], slots[short] = self._to_distance(raw2), slots2
            still = short[(slots2 >= 0).sum(axis=1) < k]
            if len(still):
                dists[still], slots[still] = self._exact_rows(queries[still], k, mask)
        del bitmap  # only now may the selector's buffer go
        return dists, slots

    def _filtered_ef(self, k: int, n_candidates: int, n_slots: int) -> int:
        """The beam for a walk where only ``n_candidates`` of ``n_slots`` may be returned: a
        selective filter needs a wider beam to meet k members near the query (k / selectivity,
        doubled, at most 512); unfiltered searches keep ``ef_search``."""
        if n_candidates >= n_slots:
            return self.ef_search
        wanted = int(np.ceil(2 * k * n_slots / max(1, n_candidates)))
        return max(self.ef_search, min(512, wanted))

    def _reset_storage(self) -> None:
        self._index = self._new_faiss_index()

    def _save_storage(self, directory: Path) -> None:
        faiss.write_index(self._index, str(directory / FAISS_FILE))

    def _load_storage(self, directory: Path, n_slots: int) -> None:
        index = faiss.read_index(str(directory / FAISS_FILE))
        if index.ntotal != n_slots or index.d != self._dim:
            raise ValueError(f"{directory}: index.faiss holds {index.ntotal}x{index.d}")
        self._index = index

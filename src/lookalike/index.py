"""Approximate nearest-neighbour index behind a small interface.

Two backends share one contract (:class:`VectorIndex`):

* :class:`ExactIndex` -- brute-force numpy; ground truth and small catalogues.
* :class:`HnswIndex` -- faiss ``IndexHNSWFlat``; the default for serving.

Distances returned by ``search``:

* ``"cosine"``: vectors are L2-normalised on add and on query; the returned
  distance is ``1 - cosine_similarity`` (in ``[0, 2]``).
* ``"l2"``: plain euclidean distance ``||q - x||`` (faiss works with the
  squared distance internally; we take the square root before returning).

Both backends keep items in append-only "slots". Removing or replacing an item
tombstones its slot, because faiss HNSW graphs cannot drop nodes; tombstoned
slots are filtered out at search time and only reclaimed by :meth:`compact`
(a full rebuild), which the caller runs when ``n_tombstones`` gets large.

Thread safety: ``search`` and the read accessors never mutate the index, so
any number of threads may search concurrently. Mutations (``add``,
``remove``, ``compact``) must not overlap with each other or with searches.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import faiss
import numpy as np

__all__ = [
    "VectorIndex",
    "ExactIndex",
    "HnswIndex",
    "make_index",
    "load_index",
]

_DISTANCES = ("cosine", "l2")
_MANIFEST = "manifest.json"
_ITEMS = "items.npz"
_FORMAT_VERSION = 1

SearchResult = list[list[tuple[str, float]]]


# --------------------------------------------------------------------------- helpers


def _as_matrix(vectors: np.ndarray, dim: int, *, allow_1d: bool) -> np.ndarray:
    """Validate and convert to a C-contiguous float32 (n, dim) matrix."""
    x = np.asarray(vectors)
    if x.ndim == 1 and allow_1d:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {np.shape(vectors)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or inf")
    return x


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # Zero vectors stay zero (distance 1 to everything) instead of becoming NaN.
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def _brute_force_knn(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    distance: str,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of ``queries`` in ``base``; returns (distances, row indices).

    Vectors are assumed pre-normalised for cosine. Output is nearest first,
    shape (n_queries, min(k, len(base))).
    """
    k = min(k, len(base))
    n = len(queries)
    out_d = np.empty((n, k), dtype=np.float32)
    out_i = np.empty((n, k), dtype=np.int64)
    if k == 0:
        return out_d, out_i
    base_sq = (base.astype(np.float64) ** 2).sum(axis=1) if distance == "l2" else None
    for start in range(0, n, batch_size):
        q = queries[start : start + batch_size]
        sims = q @ base.T
        if distance == "cosine":
            d = np.clip(1.0 - sims, 0.0, 2.0)
        else:
            q_sq = (q.astype(np.float64) ** 2).sum(axis=1)[:, None]
            d = np.sqrt(np.maximum(q_sq - 2.0 * sims + base_sq[None, :], 0.0))
        if k < d.shape[1]:
            part = np.argpartition(d, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(d.shape[1]), d.shape).copy()
        part_d = np.take_along_axis(d, part, axis=1)
        # Stable sort on the partitioned block keeps ties in index order.
        order = np.argsort(part_d, axis=1, kind="stable")
        out_i[start : start + len(q)] = np.take_along_axis(part, order, axis=1)
        out_d[start : start + len(q)] = np.take_along_axis(part_d, order, axis=1)
    return out_d, out_i


# --------------------------------------------------------------------------- interface


class VectorIndex(abc.ABC):
    """Id-addressed vector index with category filtering and persistence.

    Subclasses implement storage of vectors per slot and ``_knn``; this class
    owns id/category bookkeeping, tombstones, validation and persistence.
    """

    backend: ClassVar[str]

    def __init__(self, dim: int, distance: str = "cosine", metadata: dict[str, Any] | None = None):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if distance not in _DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; choose one of {list(_DISTANCES)}")
        self._dim = int(dim)
        self._distance = distance
        #: Free-form, JSON-serialisable info saved in the manifest (e.g. model version).
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._reset_bookkeeping()

    def _reset_bookkeeping(self) -> None:
        self._slot_ids: list[str] = []
        self._slot_cats = np.empty(0, dtype=np.int32)
        self._alive = np.empty(0, dtype=bool)
        self._slot_of: dict[str, int] = {}  # live ids only
        self._cat_names: list[str] = []
        self._cat_code: dict[str, int] = {}

    # -- properties ---------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def distance(self) -> str:
        return self._distance

    @property
    def n_tombstones(self) -> int:
        """Slots held by removed/replaced items; reclaimed by :meth:`compact`."""
        return len(self._slot_ids) - len(self._slot_of)

    def __len__(self) -> int:
        return len(self._slot_of)

    # -- backend hooks ------------------------------------------------------------

    @abc.abstractmethod
    def _append_vectors(self, vectors: np.ndarray) -> None:
        """Store prepared vectors in new slots ``n_slots .. n_slots + len - 1``."""

    @abc.abstractmethod
    def _vectors_at(self, slots: np.ndarray) -> np.ndarray:
        """Return stored (prepared) vectors for the given slots."""

    @abc.abstractmethod
    def _knn(
        self, queries: np.ndarray, k: int, mask: np.ndarray, n_candidates: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """k-NN restricted to slots where ``mask`` is True, nearest first.

        ``k <= n_candidates``. Returns (distances, slots), shape (n, k), with
        slot -1 for missing results. Must not mutate ``self``.
        """

    @abc.abstractmethod
    def _reset_storage(self) -> None:
        """Drop all stored vectors (used by compaction)."""

    @abc.abstractmethod
    def _params(self) -> dict[str, Any]:
        """Constructor params recorded in the manifest."""

    @abc.abstractmethod
    def _save_storage(self, directory: Path) -> None: ...

    @abc.abstractmethod
    def _load_storage(self, directory: Path, n_slots: int) -> None: ...

    # -- mutation -----------------------------------------------------------------

    def _prepare(self, vectors: np.ndarray, *, allow_1d: bool) -> np.ndarray:
        x = _as_matrix(vectors, self._dim, allow_1d=allow_1d)
        return _l2_normalise(x) if self._distance == "cosine" else x

    def add(self, ids: Sequence[str], vectors: np.ndarray, categories: Sequence[str]) -> None:
        """Add items; an id already present is replaced (vector and category)."""
        ids = [str(i) for i in ids]
        categories = [str(c) for c in categories]
        x = self._prepare(vectors, allow_1d=False)
        if not (len(ids) == len(categories) == len(x)):
            raise ValueError(
                f"ids ({len(ids)}), vectors ({len(x)}) and categories ({len(categories)}) "
                "must have the same length"
            )
        if len(set(ids)) != len(ids):
            raise ValueError("ids within one add() call must be unique")
        if not ids:
            return
        # Store vectors first: if the backend fails, bookkeeping is untouched.
        self._append_vectors(x)
        start = len(self._slot_ids)
        for id_ in ids:
            old = self._slot_of.get(id_)
            if old is not None:
                self._alive[old] = False
        codes = np.empty(len(ids), dtype=np.int32)
        for j, cat in enumerate(categories):
            code = self._cat_code.get(cat)
            if code is None:
                code = self._cat_code[cat] = len(self._cat_names)
                self._cat_names.append(cat)
            codes[j] = code
        self._slot_ids.extend(ids)
        self._slot_cats = np.concatenate([self._slot_cats, codes])
        self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])
        for j, id_ in enumerate(ids):
            self._slot_of[id_] = start + j

    def remove(self, ids: Sequence[str]) -> None:
        """Remove items by id; raises KeyError listing any unknown ids (removing none)."""
        ids = [str(i) for i in ids]
        unknown = sorted({i for i in ids if i not in self._slot_of})
        if unknown:
            raise KeyError(f"unknown ids: {unknown}")
        for id_ in set(ids):
            self._alive[self._slot_of.pop(id_)] = False

    def compact(self) -> int:
        """Rebuild storage without tombstoned slots; returns how many were dropped.

        For HNSW this rebuilds the whole graph (O(n log n)); run it offline or
        on a copy when ``n_tombstones`` is a sizeable fraction of ``len``.
        """
        dropped = self.n_tombstones
        if dropped == 0:
            return 0
        live = np.flatnonzero(self._alive)
        vectors = self._vectors_at(live)
        ids = [self._slot_ids[s] for s in live]
        cats = [self._cat_names[c] for c in self._slot_cats[live]]
        self._reset_storage()
        self._reset_bookkeeping()
        # Stored vectors are already normalised; re-normalising is a no-op.
        self.add(ids, vectors, cats)
        return dropped

    # -- reads --------------------------------------------------------------------

    def contains(self, id: str) -> bool:
        return str(id) in self._slot_of

    def __contains__(self, id: object) -> bool:
        return str(id) in self._slot_of

    def _slot(self, id: str) -> int:
        try:
            return self._slot_of[str(id)]
        except KeyError:
            raise KeyError(f"unknown id: {id!r}") from None

    def category_of(self, id: str) -> str:
        return self._cat_names[self._slot_cats[self._slot(id)]]

    def vector_of(self, id: str) -> np.ndarray:
        """Stored vector of an item (L2-normalised when distance is cosine)."""
        return self._vectors_at(np.array([self._slot(id)], dtype=np.int64))[0].copy()

    def categories(self) -> set[str]:
        """Categories with at least one live item."""
        codes = np.unique(self._slot_cats[self._alive])
        return {self._cat_names[c] for c in codes}

    def ids(self) -> list[str]:
        """Live ids, in insertion order of their current slot."""
        return [self._slot_ids[s] for s in np.flatnonzero(self._alive)]

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        category: str | None = None,
        exclude_ids: list[set[str]] | None = None,
    ) -> SearchResult:
        """k nearest live items per query, nearest first, as (id, distance) pairs.

        ``vectors`` is (n, dim) or a single (dim,) query (still one result list).
        ``category`` restricts results to that category; ``exclude_ids[i]`` is a
        set of ids never returned for query i. Fewer than k results come back
        only when fewer than k items match.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = self._prepare(vectors, allow_1d=True)
        n = len(queries)
        if exclude_ids is not None and len(exclude_ids) != n:
            raise ValueError(f"exclude_ids has {len(exclude_ids)} entries for {n} queries")
        mask = self._alive
        if category is not None:
            code = self._cat_code.get(str(category))
            if code is None:
                return [[] for _ in range(n)]
            mask = mask & (self._slot_cats == code)
        n_candidates = int(mask.sum())
        if n == 0 or n_candidates == 0:
            return [[] for _ in range(n)]
        # Over-fetch by the largest exclusion set so filtering still leaves k.
        extra = max((len(e) for e in exclude_ids), default=0) if exclude_ids else 0
        k_fetch = min(k + extra, n_candidates)
        dists, slots = self._knn(queries, k_fetch, mask, n_candidates)
        results: SearchResult = []
        for row in range(n):
            excluded = exclude_ids[row] if exclude_ids else ()
            hits: list[tuple[str, float]] = []
            for s, d in zip(slots[row], dists[row]):
                if s < 0:
                    continue
                id_ = self._slot_ids[s]
                if id_ in excluded:
                    continue
                hits.append((id_, float(d)))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    # -- persistence --------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the index to ``directory`` (created if needed); returns the path.

        The manifest is written last, so a crashed save leaves no loadable index.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        manifest_path = directory / _MANIFEST
        manifest_path.unlink(missing_ok=True)
        manifest = {
            "format_version": _FORMAT_VERSION,
            "backend": self.backend,
            "dim": self._dim,
            "distance": self._distance,
            "count": len(self),
            "n_slots": len(self._slot_ids),
            "params": self._params(),
            "metadata": self.metadata,
        }
        # Serialise before writing anything so non-JSON metadata fails early.
        manifest_text = json.dumps(manifest, indent=2, sort_keys=True)
        np.savez(
            directory / _ITEMS,
            ids=np.array(self._slot_ids, dtype=str),
            cat_codes=self._slot_cats,
            cat_names=np.array(self._cat_names, dtype=str),
            alive=self._alive,
        )
        self._save_storage(directory)
        manifest_path.write_text(manifest_text)
        return directory

    @classmethod
    def _from_saved(cls, directory: Path, manifest: dict[str, Any]) -> "VectorIndex":
        index = cls(
            dim=manifest["dim"],
            distance=manifest["distance"],
            metadata=manifest.get("metadata"),
            **manifest.get("params", {}),
        )
        with np.load(directory / _ITEMS, allow_pickle=False) as items:
            slot_ids = [str(i) for i in items["ids"]]
            cat_codes = items["cat_codes"].astype(np.int32)
            cat_names = [str(c) for c in items["cat_names"]]
            alive = items["alive"].astype(bool)
        n_slots = int(manifest["n_slots"])
        if len(slot_ids) != n_slots or len(alive) != n_slots:
            raise ValueError(f"{directory}: item table does not match manifest n_slots")
        index._load_storage(directory, n_slots)
        index._slot_ids = slot_ids
        index._slot_cats = cat_codes
        index._alive = alive
        index._cat_names = cat_names
        index._cat_code = {c: i for i, c in enumerate(cat_names)}
        index._slot_of = {slot_ids[s]: int(s) for s in np.flatnonzero(alive)}
        if len(index) != manifest["count"]:
            raise ValueError(f"{directory}: {len(index)} live items, manifest says {manifest['count']}")
        return index

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dim={self._dim}, distance={self._distance!r}, "
            f"len={len(self)}, tombstones={self.n_tombstones})"
        )


# --------------------------------------------------------------------------- exact


class ExactIndex(VectorIndex):
    """Brute-force numpy index: exact results, O(n) per query."""

    backend = "exact"

    def __init__(
        self,
        dim: int,
        distance: str = "cosine",
        metadata: dict[str, Any] | None = None,
        batch_size: int = 1024,
    ):
        super().__init__(dim, distance, metadata)
        self.batch_size = int(batch_size)
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
        dists, rows = _brute_force_knn(queries, base, k, self._distance, self.batch_size)
        return dists, (rows if candidates is None else candidates[rows])

    def _reset_storage(self) -> None:
        self._vectors = np.empty((0, self._dim), dtype=np.float32)

    def _params(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size}

    def _save_storage(self, directory: Path) -> None:
        np.save(directory / "vectors.npy", self._vectors)

    def _load_storage(self, directory: Path, n_slots: int) -> None:
        vectors = np.load(directory / "vectors.npy", allow_pickle=False)
        if vectors.shape != (n_slots, self._dim):
            raise ValueError(f"{directory}: vectors.npy has shape {vectors.shape}")
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)


# --------------------------------------------------------------------------- hnsw


class HnswIndex(VectorIndex):
    """faiss ``IndexHNSWFlat``; faiss internal ids are our slot numbers.

    Params: ``m`` (graph degree), ``ef_construction`` (build beam width),
    ``ef_search`` (default query beam width; raised to k when k is larger).

    Filtering (tombstones, category) uses a faiss ``IDSelectorBitmap`` passed
    through ``SearchParametersHNSW``: the graph walk still traverses filtered
    nodes but only members enter the result heap. Rows that come back short
    are retried with a wider beam and finally answered exactly, and filters
    leaving at most ``filter_brute_force_max`` candidates are answered exactly
    up front (cheaper than a graph walk that mostly visits non-members).
    """

    backend = "hnsw"

    def __init__(
        self,
        dim: int,
        distance: str = "cosine",
        metadata: dict[str, Any] | None = None,
        m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        filter_brute_force_max: int = 4096,
    ):
        super().__init__(dim, distance, metadata)
        self.m = int(m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.filter_brute_force_max = int(filter_brute_force_max)
        self._index = self._new_faiss_index()

    def _new_faiss_index(self) -> faiss.IndexHNSWFlat:
        # Inner product on normalised vectors == cosine similarity.
        metric = faiss.METRIC_INNER_PRODUCT if self._distance == "cosine" else faiss.METRIC_L2
        index = faiss.IndexHNSWFlat(self._dim, self.m, metric)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
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
        dists, rows = _brute_force_knn(queries, self._vectors_at(candidates), k, self._distance)
        return dists, candidates[rows]

    def _knn(self, queries, k, mask, n_candidates):
        filtered = n_candidates < len(mask)
        if filtered and n_candidates <= self.filter_brute_force_max:
            return self._exact_rows(queries, k, mask)
        selector = bitmap = None
        if filtered:
            # faiss reads bit i as (bitmap[i >> 3] >> (i & 7)) & 1, i.e. little-endian
            # bit order. The selector only borrows the buffer: keep `bitmap` alive.
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        raw, slots = self._hnsw_search(queries, k, self.ef_search, selector)
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

    def _reset_storage(self) -> None:
        self._index = self._new_faiss_index()

    def _params(self) -> dict[str, Any]:
        return {
            "m": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "filter_brute_force_max": self.filter_brute_force_max,
        }

    def _save_storage(self, directory: Path) -> None:
        faiss.write_index(self._index, str(directory / "index.faiss"))

    def _load_storage(self, directory: Path, n_slots: int) -> None:
        index = faiss.read_index(str(directory / "index.faiss"))
        if index.ntotal != n_slots or index.d != self._dim:
            raise ValueError(f"{directory}: index.faiss holds {index.ntotal}x{index.d}")
        self._index = index


# --------------------------------------------------------------------------- factory

_BACKENDS: dict[str, type[VectorIndex]] = {
    ExactIndex.backend: ExactIndex,
    HnswIndex.backend: HnswIndex,
}


def _backend_class(backend: str) -> type[VectorIndex]:
    try:
        return _BACKENDS[backend]
    except KeyError:
        raise ValueError(
            f"unknown index backend {backend!r}; choose one of {sorted(_BACKENDS)}"
        ) from None


def make_index(backend: str, dim: int, distance: str = "cosine", **params: Any) -> VectorIndex:
    """Create an empty index; ``params`` go to the backend (e.g. m, ef_search, metadata)."""
    return _backend_class(backend)(dim=dim, distance=distance, **params)


def load_index(directory: str | Path) -> VectorIndex:
    """Load an index written by :meth:`VectorIndex.save`, dispatching on its backend."""
    directory = Path(directory)
    manifest_path = directory / _MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"no index manifest at {manifest_path}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != _FORMAT_VERSION:
        raise ValueError(f"{manifest_path}: unsupported format_version {manifest.get('format_version')}")
    return _backend_class(manifest["backend"])._from_saved(directory, manifest)

"""The ANN index interface: :class:`VectorIndex` (its manifest: :mod:`.manifest`).

Backends (:mod:`lookalike.index.exact`, :mod:`lookalike.index.hnsw`, ...) implement a few storage
and search hooks; this class owns ids, categories, tombstones, validation and persistence.

Distances returned by ``search``:

* ``"cosine"``: vectors are L2-normalised on add and on query; the returned
  distance is ``1 - cosine_similarity`` (in ``[0, 2]``).
* ``"l2"``: plain euclidean distance ``||q - x||``.

Items live in append-only "slots". Removing or replacing an item tombstones its slot (faiss HNSW
graphs cannot drop nodes); tombstoned slots are filtered out at search time and reclaimed by
:meth:`VectorIndex.compact` (a full rebuild), which the caller runs when ``n_tombstones`` grows.

Thread safety: ``search`` and the read accessors never mutate the index, so any number of threads
may search concurrently. Mutations (``add``, ``remove``, ``compact``) must not overlap with each
other or with searches.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from lookalike.index.manifest import IndexManifest, IndexProvenance, build_params
from lookalike.vectors import check_distance, prepare

ITEMS_FILE = "items.npz"

SearchResult = list[list[tuple[str, float]]]


# --------------------------------------------------------------------------- interface


class VectorIndex(abc.ABC):
    """Id-addressed vector index with category filtering and persistence.

    Subclasses implement storage of vectors per slot and ``_knn``; this class
    owns id/category bookkeeping, tombstones, validation and persistence.
    """

    backend: ClassVar[str]

    #: Typed constructor parameters of the backend (a frozen dataclass with defaults): what
    #: ``index.params.<backend>`` in the settings may hold, checked when settings load.
    Params: ClassVar[type]

    def __init__(self, dim: int, distance: str = "cosine", params: Any = None,
                 provenance: IndexProvenance | None = None):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self._dim = int(dim)
        self._distance = check_distance(distance)
        self.params = params if params is not None else self.Params()
        #: Where the index came from (model version, Delta versions); saved in the manifest.
        self.provenance = provenance
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

    def build_params(self) -> dict[str, Any]:
        """The parameters the stored structure depends on (all but ``Params.search_time``)."""
        return build_params(self.params)

    def set_search_params(self, **values: Any) -> None:
        """Change search-time parameters (e.g. ``ef_search``) in place, without a rebuild."""
        allowed = set(getattr(self.Params, "search_time", ()))
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"{unknown} are not search-time parameters of the {self.backend} "
                             f"backend (those are {sorted(allowed)})")
        self.params = dataclasses.replace(self.params, **values)

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
    def _save_storage(self, directory: Path) -> None: ...

    @abc.abstractmethod
    def _load_storage(self, directory: Path, n_slots: int) -> None: ...

    # -- mutation -----------------------------------------------------------------

    def _prepare(self, vectors: np.ndarray, *, allow_1d: bool) -> np.ndarray:
        return prepare(vectors, self._distance, self._dim, allow_1d=allow_1d)

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
            n_candidates = int(np.count_nonzero(mask))
        else:
            n_candidates = len(self._slot_of)  # the live items: no pass over the mask
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

    def manifest(self) -> IndexManifest:
        return IndexManifest(backend=self.backend, dim=self._dim, distance=self._distance,
                             count=len(self), n_slots=len(self._slot_ids),
                             params=dataclasses.asdict(self.params), provenance=self.provenance)

    def save(self, directory: str | Path) -> Path:
        """Write the index to ``directory`` (created if needed); returns the path.

        The manifest is written last, so a crashed save leaves no loadable index.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        IndexManifest.path(directory).unlink(missing_ok=True)
        # Serialise before writing anything so a bad manifest fails early.
        manifest_text = self.manifest().to_json()
        np.savez(
            directory / ITEMS_FILE,
            ids=np.array(self._slot_ids, dtype=str),
            cat_codes=self._slot_cats,
            cat_names=np.array(self._cat_names, dtype=str),
            alive=self._alive,
        )
        self._save_storage(directory)
        IndexManifest.path(directory).write_text(manifest_text, encoding="utf-8")
        return directory

    @classmethod
    def from_saved(cls, directory: Path, manifest: IndexManifest) -> "VectorIndex":
        """Load the index saved in ``directory`` (its manifest already read)."""
        index = cls(dim=manifest.dim, distance=manifest.distance,
                    params=cls.Params(**manifest.params), provenance=manifest.provenance)
        with np.load(directory / ITEMS_FILE, allow_pickle=False) as items:
            slot_ids = [str(i) for i in items["ids"]]
            cat_codes = items["cat_codes"].astype(np.int32)
            cat_names = [str(c) for c in items["cat_names"]]
            alive = items["alive"].astype(bool)
        n_slots = manifest.n_slots
        if len(slot_ids) != n_slots or len(alive) != n_slots:
            raise ValueError(f"{directory}: item table does not match manifest n_slots")
        index._load_storage(directory, n_slots)
        index._slot_ids = slot_ids
        index._slot_cats = cat_codes
        index._alive = alive
        index._cat_names = cat_names
        index._cat_code = {c: i for i, c in enumerate(cat_names)}
        index._slot_of = {slot_ids[s]: int(s) for s in np.flatnonzero(alive)}
        if len(index) != manifest.count:
            raise ValueError(f"{directory}: {len(index)} live items, manifest says {manifest.count}")
        return index

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dim={self._dim}, distance={self._distance!r}, "
            f"len={len(self)}, tombstones={self.n_tombstones})"
        )



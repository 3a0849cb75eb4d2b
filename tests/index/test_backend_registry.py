"""Adding an index backend is one file plus one registration; settings accept it by name.

The backend below is that one file: exact search with faiss' flat index. Decorating it with
``@register_backend`` is the registration (a built-in backend is instead imported in
``lookalike/index/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest

from lookalike.config import ConfigError, load_settings
from lookalike.index import (
    VectorIndex,
    backend_names,
    get_backend,
    load_index,
    make_index,
    register_backend,
)


@dataclass(frozen=True)
class FlatParams:
    threads: int = 1

    def validate(self, key: str) -> None:
        if self.threads < 1:
            raise ValueError(f"{key}.threads must be >= 1")


@register_backend
class FaissFlatIndex(VectorIndex):
    """Exact search by faiss IndexFlat (inner product on normalised vectors, or L2)."""

    backend = "faiss_flat"
    Params = FlatParams

    def __init__(self, dim, distance="cosine", params=None, provenance=None):
        super().__init__(dim, distance, params, provenance)
        self._reset_storage()

    def _reset_storage(self):
        self._index = (faiss.IndexFlatIP(self.dim) if self.distance == "cosine"
                       else faiss.IndexFlatL2(self.dim))

    def _append_vectors(self, vectors):
        self._index.add(vectors)

    def _vectors_at(self, slots):
        return self._index.reconstruct_batch(np.ascontiguousarray(slots, dtype=np.int64))

    def _knn(self, queries, k, mask, n_candidates):
        bitmap = np.packbits(mask, bitorder="little")
        params = faiss.SearchParameters()
        params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        raw, slots = self._index.search(queries, k, params=params)
        dist = (np.clip(1 - raw, 0, 2) if self.distance == "cosine"
                else np.sqrt(np.maximum(raw, 0)))
        return dist.astype(np.float32), slots

    def _save_storage(self, directory: Path):
        faiss.write_index(self._index, str(directory / "flat.faiss"))

    def _load_storage(self, directory: Path, n_slots: int):
        self._index = faiss.read_index(str(directory / "flat.faiss"))


def test_registered_backend_is_configurable_built_saved_and_loaded(tmp_path):
    assert "faiss_flat" in backend_names() and get_backend("faiss_flat") is FaissFlatIndex
    settings = load_settings(overrides={"index": {"backend": "faiss_flat",
                                                  "params": {"faiss_flat": {"threads": 2}}}})
    assert settings.index.backend_params == FlatParams(threads=2)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    ids, cats = [f"p{i}" for i in range(300)], [f"c{i % 3}" for i in range(300)]
    index = make_index("faiss_flat", 8, "cosine", settings.index.backend_params)
    exact = make_index("exact", 8, "cosine")
    for built in (index, exact):
        built.add(ids, x, cats)
        built.remove(["p3"])
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert isinstance(loaded, FaissFlatIndex) and loaded.params == FlatParams(threads=2)
    for category in (None, "c1"):
        got = loaded.search(x[:10], 5, category=category)
        want = exact.search(x[:10], 5, category=category)
        assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want]


def test_settings_refuse_unknown_backends_and_bad_params():
    with pytest.raises(ConfigError, match="index.backend.*unknown index backend 'scann'"):
        load_settings(overrides={"index": {"backend": "scann"}})
    with pytest.raises(ConfigError, match="index.params.hnsw.mm'.*unknown key"):
        load_settings(overrides={"index": {"params": {"hnsw": {"mm": 3}}}})
    with pytest.raises(ConfigError, match="index.params.hnsw.m'.*expected an integer"):
        load_settings(overrides={"index": {"params": {"hnsw": {"m": "many"}}}})
    with pytest.raises(ConfigError, match="index.params.hnsw.ef_search must be >= 1"):
        load_settings(overrides={"index": {"params": {"hnsw": {"ef_search": 0}}}})
    # A backend's missing params take its defaults.
    defaults = load_settings(overrides={"index": {"backend": "exact", "params": {}}})
    assert defaults.index.backend_params == get_backend("exact").Params()

"""Approximate nearest-neighbour index: one interface, pluggable backends, built from Delta.

* :mod:`.base` -- :class:`VectorIndex` (ids, categories, tombstones, persistence);
* :mod:`.manifest` -- its typed ``manifest.json``: :class:`IndexManifest`, :class:`IndexProvenance`;
* :mod:`.registry` -- the open backend registry (:func:`register_backend`, :func:`get_backend`);
* backends, one file each: :mod:`.exact` (numpy, exact), :mod:`.hnsw` (faiss HNSW);
* :mod:`.build` -- the job that builds or updates an index from the Delta embeddings table.

Adding a backend: write ``lookalike/index/<name>.py`` with a ``VectorIndex`` subclass (``backend``
name, ``Params`` dataclass, the storage/search hooks) decorated with ``@register_backend``, and
import it below. ``index: {backend: <name>, params: {<name>: {...}}}`` then selects it.
"""

from pathlib import Path

from lookalike.index.base import SearchResult, VectorIndex  # noqa: F401
from lookalike.index.manifest import IndexManifest, IndexProvenance  # noqa: F401

# Built-in backends: importing a module registers it.
from lookalike.index.exact import ExactIndex  # noqa: E402,F401
from lookalike.index.hnsw import HnswIndex  # noqa: E402,F401
from lookalike.index.registry import (backend_names, get_backend, make_index,  # noqa: F401
                                      register_backend)


def load_index(directory: str | Path) -> VectorIndex:
    """Load an index written by :meth:`VectorIndex.save`, dispatching on its backend."""
    directory = Path(directory)
    manifest = IndexManifest.read(directory)
    return get_backend(manifest.backend).from_saved(directory, manifest)

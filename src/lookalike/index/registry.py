"""The open registry of index backends: name -> :class:`~lookalike.index.base.VectorIndex` class.

A backend is one file defining a ``VectorIndex`` subclass with a ``backend`` name and a ``Params``
dataclass, decorated with :func:`register_backend`; the built-in ones are imported (registered)
by ``lookalike/index/__init__.py``. Settings accept any registered name (``index.backend``) and
check ``index.params.<name>`` against that backend's ``Params``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lookalike.plugins import Registry

_BACKENDS: Registry[type] = Registry("index backend")
backend_names = _BACKENDS.names
get_backend = _BACKENDS.get


def register_backend(cls: type) -> type:
    """Class decorator: make ``cls`` available as ``index.backend: <cls.backend>``."""
    name = getattr(cls, "backend", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute `backend` (its name)")
    if not hasattr(cls, "Params"):
        raise TypeError(f"{cls.__name__} needs a `Params` dataclass (its settings)")
    _BACKENDS.add(name, cls)
    return cls


def make_index(backend: str, dim: int, distance: str = "cosine", params: Any = None,
               provenance: Any = None, **param_values: Any):
    """An empty index of ``backend``. ``params``: its Params instance or a dict; keyword
    arguments (``m=16``) set single parameters on top."""
    cls = get_backend(backend)
    if params is None or isinstance(params, dict):
        params = cls.Params(**{**(params or {}), **param_values})
    elif param_values:
        params = dataclasses.replace(params, **param_values)
    return cls(dim=dim, distance=distance, params=params, provenance=provenance)

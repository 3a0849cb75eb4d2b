"""An index's ``manifest.json``: the typed :class:`IndexManifest`, and the
:class:`IndexProvenance` that says which model and Delta versions an index was built from."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2


@dataclass(frozen=True)
class IndexProvenance:
    """What an index was built from: the model version and the Delta snapshots it read."""

    model_version: str
    embeddings_table: str
    embeddings_version: int
    products_table: str
    products_version: int
    built_at: str

    @classmethod
    def from_dict(cls, data: dict | None) -> "IndexProvenance | None":
        if not data:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class IndexManifest:
    """``manifest.json`` of a saved index; written last, so its presence means a whole index."""

    backend: str
    dim: int
    distance: str
    count: int
    n_slots: int
    params: dict
    provenance: IndexProvenance | None = None
    format_version: int = FORMAT_VERSION

    @staticmethod
    def path(directory: str | Path) -> Path:
        return Path(directory) / MANIFEST_FILE

    @classmethod
    def exists(cls, directory: str | Path) -> bool:
        return cls.path(directory).exists()

    @classmethod
    def read(cls, directory: str | Path) -> "IndexManifest":
        path = cls.path(directory)
        if not path.exists():
            raise FileNotFoundError(f"no index manifest at {path}")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format_version {data.get('format_version')} "
                             f"(this version reads {FORMAT_VERSION}); rebuild the index")
        data["provenance"] = IndexProvenance.from_dict(data.get("provenance"))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def build_params(params: Any) -> dict[str, Any]:
    """A Params dataclass as a dict, without its search-time fields."""
    search_time = set(getattr(type(params), "search_time", ()))
    return {k: v for k, v in dataclasses.asdict(params).items() if k not in search_time}

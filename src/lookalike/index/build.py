"""The index job: the Delta embeddings of one model version -> a saved ANN index.

The index of model version ``run_id`` lives in ``LOOKALIKE_HOME/indexes/<run_id>/``. When a saved
index of that model version, table, geometry and index settings exists, only the rows changed
since it was saved (read from the embeddings table's change data feed) are added or removed;
otherwise it is rebuilt. Saving swaps folders atomically, so a reader never sees half an index.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lookalike.config import Settings
from lookalike.errors import UsageError
from lookalike.index.manifest import build_params
from lookalike.index import (
    IndexManifest,
    IndexProvenance,
    VectorIndex,
    load_index,
    make_index,
)

log = logging.getLogger(__name__)


def index_dir(settings: Settings, run_id: str) -> Path:
    """Where the index of model version ``run_id`` lives: ``LOOKALIKE_HOME/indexes/<run_id>``."""
    return settings.home_path / "indexes" / run_id


def _vectors_frame(frame) -> tuple[list[str], np.ndarray, list[str]]:
    pdf = frame.select("product_id", "vector", "category").toPandas()
    if pdf.empty:
        return [], np.zeros((0, 0), dtype=np.float32), []
    vectors = np.stack([np.asarray(v, dtype=np.float32) for v in pdf["vector"]])
    return pdf["product_id"].tolist(), vectors, pdf["category"].tolist()


def _changed_since(spark, table, run_id: str, start_version: int, end_version: int
                   ) -> set[str] | None:
    """product_ids of model ``run_id`` touched in table versions (start, end]; None if unknown."""
    from pyspark.sql import functions as F

    if start_version >= end_version:
        return set()
    try:
        changes = (table.read(spark, readChangeFeed="true", startingVersion=start_version + 1,
                              endingVersion=end_version)
                   .where(F.col("model_version") == run_id)
                   .select("product_id").distinct().collect())
    except Exception as error:  # noqa: BLE001 - change feed gone (vacuum) -> rebuild
        log.warning("change feed of %s unavailable (%s): rebuilding the index", table, error)
        return None
    return {r["product_id"] for r in changes}


def _reusable(settings: Settings, directory: Path, run_id: str, path: str, dim: int,
              distance: str) -> tuple[VectorIndex | None, bool]:
    """(the saved index if it was built for exactly this model, table and build settings;
    whether its search-time parameters were changed to the settings')."""
    if not IndexManifest.exists(directory):
        return None, False
    try:
        index = load_index(directory)
    except (OSError, ValueError, TypeError) as error:
        log.warning("saved index %s unreadable (%s): rebuilding", directory, error)
        return None, False
    made_by = index.provenance
    wanted = settings.index.backend_params
    same = (made_by is not None and made_by.model_version == run_id
            and made_by.embeddings_table == path and index.dim == dim
            and index.distance == distance and index.backend == settings.index.backend
            and index.build_params() == build_params(wanted))
    if not same:
        return None, False
    changed = index.params != wanted
    index.params = wanted  # search-time parameters (ef_search, ...) follow the settings
    return index, changed


def _apply_changes(index: VectorIndex, current, changed: set[str]) -> tuple[int, int]:
    """Add the current vectors of ``changed`` ids and remove those gone; (added, removed)."""
    from pyspark.sql import functions as F

    ids, vectors, cats = _vectors_frame(current.where(F.col("product_id").isin(list(changed))))
    present = set(ids)
    gone = [i for i in changed if i not in present and index.contains(i)]
    if gone:
        index.remove(gone)
    if ids:
        index.add(ids, vectors, cats)
    if index.n_tombstones > max(1000, len(index)):
        index.compact()
    return len(ids), len(gone)


def build_index(settings: Settings, run_id: str | None = None, rebuild: bool = False) -> dict:
    """Build or update the ANN index of model version ``run_id`` (default: latest training run).

    Returns ``{model_version, mode (built|updated|unchanged), count, added, removed, path,
    embeddings_version, products_version}``.
    """
    from pyspark.sql import functions as F

    from lookalike.catalogue.tables import catalogue_table
    from lookalike.embeddings import embedding_history
    from lookalike.learning.artifacts import model_distance, read_info, resolve_model
    from lookalike.spark import get_spark

    run_id, model_dir = resolve_model(settings, run_id)
    info = read_info(model_dir)
    spark = get_spark(settings)
    table = catalogue_table(settings, "embeddings")
    path = str(table)
    if not table.exists(spark):
        raise UsageError(f"no embeddings table {path}: run `lookalike embed` first")
    version = table.version(spark)
    current = (table.read(spark, versionAsOf=version)
               .where(F.col("model_version") == run_id))
    history = embedding_history(spark, settings, run_id)
    if history is None:
        raise UsageError(f"no embeddings of model version {run_id} in {path}: "
                         f"run `lookalike embed --run-id {run_id}` first")
    directory = index_dir(settings, run_id)
    dim, distance = int(info["embedding_size"]), model_distance(info, settings)

    index, params_changed = ((None, False) if rebuild else
                             _reusable(settings, directory, run_id, path, dim, distance))
    changed = (_changed_since(spark, table, run_id, index.provenance.embeddings_version, version)
               if index is not None else None)
    added = removed = 0
    if index is None or changed is None:
        mode = "built"
        ids, vectors, cats = _vectors_frame(current)
        index = make_index(settings.index.backend, dim, distance, settings.index.backend_params)
        if ids:
            index.add(ids, vectors, cats)
        added = len(ids)
    elif changed:
        mode = "updated"
        added, removed = _apply_changes(index, current, changed)
    else:
        mode = "unchanged"
    index.provenance = IndexProvenance(
        model_version=run_id, embeddings_table=path, embeddings_version=int(version),
        products_table=str(catalogue_table(settings, "products")),
        products_version=int(history.get("products_version", -1)),
        built_at=datetime.now(timezone.utc).isoformat())
    if mode != "unchanged" or params_changed or not IndexManifest.exists(directory):
        save_atomically(index, directory)
    result = {"model_version": run_id, "mode": mode, "count": len(index), "added": added,
              "removed": removed, "path": str(directory), "embeddings_version": version,
              "products_version": index.provenance.products_version}
    log.info("build_index: %s", result)
    return result


def save_atomically(index: VectorIndex, directory: Path) -> None:
    """Save next to ``directory`` then swap, so a reader never sees a half-written index."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}-{uuid.uuid4().hex[:8]}")
    index.save(staging)
    old = directory.with_name(f".{directory.name}-old-{uuid.uuid4().hex[:8]}")
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)

"""Batch embedding of the catalogue, the ANN index built from it, and batch "more like this".

* :func:`embed_catalogue` -- Spark job: embeds products that are new or whose image changed
  (``content_hash``) since the last run *for the same model version* into the Delta
  ``embeddings`` table, and deletes rows of products no longer in the catalogue. A new model
  version (training run id) embeds everything. The model artifact is downloaded once on the
  driver; executors load it once per Python worker (cached across partitions).
* :func:`build_index` -- the ANN index (:mod:`lookalike.index`) of one model version, saved
  under ``LOOKALIKE_HOME/indexes/<run_id>/``. When a saved index of that model version
  exists, only the rows changed since (read from the embeddings table's change data feed)
  are added / removed; otherwise it is rebuilt.
* :func:`write_neighbours` -- top-k neighbours of every product through the packaged pyfunc
  (the same code path as the REST server), to the Delta ``neighbours`` table.

Embeddings table: ``product_id, model_version (training run id), vector array<float>,
content_hash, category, embedded_at``, partitioned by model_version. Every write carries
commit ``userMetadata`` ``{"model_version", "products_version"}``, so the products table
version an embedding set came from is part of the Delta history.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from lookalike.config import Settings

log = logging.getLogger(__name__)

EMBEDDINGS_SCHEMA = (
    "product_id STRING NOT NULL, model_version STRING NOT NULL, vector ARRAY<FLOAT>, "
    "content_hash STRING, category STRING, embedded_at TIMESTAMP"
)
NEIGHBOURS_SCHEMA = (
    "product_id STRING NOT NULL, rank INT NOT NULL, neighbour_id STRING NOT NULL, "
    "category STRING, distance FLOAT, model_version STRING NOT NULL"
)
_EMBED_OUT_SCHEMA = "product_id STRING, vector ARRAY<FLOAT>, content_hash STRING, category STRING"
_USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"

# Loaded embedding models per Python process (Spark reuses Python workers across tasks).
_MODEL_CACHE: dict[str, Any] = {}


# --------------------------------------------------------------------------- model artifact


def models_cache_dir(settings: Settings) -> Path:
    return settings.home_path / "models"


def index_dir(settings: Settings, run_id: str) -> Path:
    """Where the index of model version ``run_id`` lives: ``LOOKALIKE_HOME/indexes/<run_id>``."""
    return settings.home_path / "indexes" / run_id


def resolve_model(settings: Settings, run_id: str | None = None) -> tuple[str, Path]:
    """The training run (given or latest) and a local folder holding its embedding model.

    The artifact is downloaded once into ``LOOKALIKE_HOME/models/<run_id>/`` and reused.
    """
    import mlflow

    from lookalike.model import INFO_FILE
    from lookalike.tracking import MODEL_ARTIFACT, require_run

    run = require_run(settings, "train", run_id)
    run_id = run.info.run_id
    target = models_cache_dir(settings) / run_id
    local = target / MODEL_ARTIFACT
    if not (local / INFO_FILE).exists():
        staging = target.with_name(f".{run_id}-{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True, exist_ok=True)
        try:
            downloaded = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=MODEL_ARTIFACT, dst_path=str(staging)))
        except Exception as error:  # noqa: BLE001 - re-raised with context
            shutil.rmtree(staging, ignore_errors=True)
            raise ValueError(f"training run {run_id} has no '{MODEL_ARTIFACT}' artifact "
                             f"({error})") from error
        if not (downloaded / INFO_FILE).exists():
            shutil.rmtree(staging, ignore_errors=True)
            raise ValueError(f"artifact '{MODEL_ARTIFACT}' of run {run_id} has no {INFO_FILE}")
        target.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(local, ignore_errors=True)
        os.replace(downloaded, local)
        shutil.rmtree(staging, ignore_errors=True)
    return run_id, local


def cached_embedding_model(directory: str):
    """``load_embedding_model(directory)``, once per process."""
    model = _MODEL_CACHE.get(directory)
    if model is None:
        from lookalike.model import load_embedding_model

        model = _MODEL_CACHE[directory] = load_embedding_model(directory)
    return model


def model_distance(info: dict, settings: Settings) -> str:
    return str(info.get("distance") or settings.model.distance)


def _read_info(model_dir: Path) -> dict:
    from lookalike.model import INFO_FILE

    return json.loads((Path(model_dir) / INFO_FILE).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- embedding job


def _embed_partitions(model_dir: str, batch_size: int, threads: int):
    """mapInPandas body: model loaded once per worker, images embedded ``batch_size`` at a time."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # Module globals are reached by import, never captured: cloudpickle would ship them
        # by value (the driver's model cache included).
        from lookalike import embedding
        from lookalike.model import configure_threads
        from lookalike.preprocessing import batch_to_model_input

        model = None
        for frame in batches:
            if frame.empty:
                continue
            if model is None:
                if model_dir not in embedding._MODEL_CACHE:
                    # Concurrent partitions share the cores: don't let each take them all.
                    configure_threads(intra=threads, inter=1)
                model = embedding.cached_embedding_model(model_dir)
            for start in range(0, len(frame), batch_size):
                chunk = frame.iloc[start:start + batch_size]
                pixels = batch_to_model_input((bytes(b) for b in chunk["image"]),
                                              model.image_size, model.channels)
                vectors = model.embed(pixels, batch_size=batch_size)
                yield pd.DataFrame({
                    "product_id": chunk["product_id"].to_numpy(),
                    "vector": list(vectors.astype(np.float32)),
                    "content_hash": chunk["content_hash"].to_numpy(),
                    "category": chunk["category"].to_numpy(),
                })
    return run


def _ensure_embeddings_table(spark, path: str) -> None:
    from delta.tables import DeltaTable

    if DeltaTable.isDeltaTable(spark, path):
        return
    (DeltaTable.createIfNotExists(spark).location(path)
     .addColumns(spark.createDataFrame([], EMBEDDINGS_SCHEMA).schema)
     .partitionedBy("model_version")
     # build_index reads what changed since the index was saved from the change feed.
     .property("delta.enableChangeDataFeed", "true")
     .execute())


class _CommitMetadata:
    """Context manager setting Delta commit userMetadata for writes in this session."""

    def __init__(self, spark, metadata: dict):
        self.spark, self.text = spark, json.dumps(metadata, sort_keys=True)

    def __enter__(self):
        self.spark.conf.set(_USER_METADATA_CONF, self.text)

    def __exit__(self, *exc):
        self.spark.conf.unset(_USER_METADATA_CONF)


def embed_catalogue(settings: Settings, run_id: str | None = None) -> dict:
    """Embed new/changed products with training run ``run_id`` (default: latest) into Delta.

    Returns ``{model_version, embedded, unchanged, removed, products_version, table_version}``.
    """
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from lookalike.catalogue import read_products, table_version
    from lookalike.spark import get_spark

    run_id, model_dir = resolve_model(settings, run_id)
    spark = get_spark(settings)
    products, products_version = read_products(spark, settings)
    products = products.select("product_id", "category", "image", "content_hash")
    path = settings.table_path(settings.catalogue.embeddings_table)
    _ensure_embeddings_table(spark, path)

    existing = (spark.read.format("delta").load(path)
                .where(F.col("model_version") == run_id)
                .select("product_id", F.col("content_hash").alias("old_hash"),
                        F.col("category").alias("old_category")))
    joined = products.join(existing, "product_id", "left")
    todo = joined.where(F.col("old_hash").isNull()
                        | (F.col("old_hash") != F.col("content_hash"))
                        | (F.col("old_category") != F.col("category"))
                        ).select("product_id", "category", "image", "content_hash")
    removed_ids = existing.select("product_id").join(products.select("product_id"),
                                                     "product_id", "left_anti")
    total = products.count()
    already = existing.limit(1).count() > 0
    removed = removed_ids.count() if already else 0

    from lookalike.model import cpu_count

    batch_size = settings.embedding.batch_size
    partitions = settings.embedding.partitions
    threads = max(1, cpu_count() // min(partitions, spark.sparkContext.defaultParallelism))
    vectors = (todo.repartition(partitions)
               .mapInPandas(_embed_partitions(str(model_dir), batch_size, threads),
                            _EMBED_OUT_SCHEMA)
               .withColumn("model_version", F.lit(run_id))
               .withColumn("embedded_at", F.current_timestamp())
               .select("product_id", "model_version", "vector", "content_hash", "category",
                       "embedded_at")
               .persist())
    try:
        started = time.perf_counter()
        embedded = vectors.count()
        embed_seconds = time.perf_counter() - started
        table = DeltaTable.forPath(spark, path)
        started = time.perf_counter()
        with _CommitMetadata(spark, {"model_version": run_id,
                                     "products_version": products_version}):
            if embedded and not already:
                # First embedding of this model version: a plain append, no MERGE needed.
                vectors.write.format("delta").mode("append").save(path)
            elif embedded:
                (table.alias("t")
                 .merge(vectors.alias("s"),
                        f"t.model_version = '{run_id}' AND t.product_id = s.product_id")
                 .whenMatchedUpdateAll()
                 .whenNotMatchedInsertAll()
                 .execute())
            if removed:
                (table.alias("t")
                 .merge(removed_ids.alias("s"),
                        f"t.model_version = '{run_id}' AND t.product_id = s.product_id")
                 .whenMatchedDelete()
                 .execute())
        write_seconds = time.perf_counter() - started
    finally:
        vectors.unpersist()
    result = {"model_version": run_id, "embedded": int(embedded),
              "unchanged": int(total - embedded), "removed": int(removed),
              "products_version": int(products_version),
              "table_version": table_version(spark, path),
              "embed_seconds": round(embed_seconds, 1), "write_seconds": round(write_seconds, 1)}
    log.info("embed_catalogue: %s", result)
    return result


def embedding_history(spark, settings: Settings, run_id: str) -> dict | None:
    """The newest commit userMetadata of the embeddings table for model version ``run_id``."""
    from delta.tables import DeltaTable

    path = settings.table_path(settings.catalogue.embeddings_table)
    rows = (DeltaTable.forPath(spark, path).history()
            .where("userMetadata IS NOT NULL").select("version", "userMetadata")
            .orderBy("version", ascending=False).collect())
    for row in rows:
        try:
            meta = json.loads(row["userMetadata"])
        except (TypeError, ValueError):
            continue
        if meta.get("model_version") == run_id:
            return {**meta, "embeddings_version": int(row["version"])}
    return None


# --------------------------------------------------------------------------- ANN index


def _vectors_frame(frame) -> tuple[list[str], np.ndarray, list[str]]:
    pdf = frame.select("product_id", "vector", "category").toPandas()
    if pdf.empty:
        return [], np.zeros((0, 0), dtype=np.float32), []
    vectors = np.stack([np.asarray(v, dtype=np.float32) for v in pdf["vector"]])
    return pdf["product_id"].tolist(), vectors, pdf["category"].tolist()


def _changed_since(spark, path: str, run_id: str, start_version: int, end_version: int
                   ) -> set[str] | None:
    """product_ids of model ``run_id`` touched in table versions (start, end]; None if unknown."""
    from pyspark.sql import functions as F

    if start_version >= end_version:
        return set()
    try:
        changes = (spark.read.format("delta").option("readChangeFeed", "true")
                   .option("startingVersion", start_version + 1)
                   .option("endingVersion", end_version).load(path)
                   .where(F.col("model_version") == run_id)
                   .select("product_id").distinct().collect())
    except Exception as error:  # noqa: BLE001 - change feed gone (vacuum) -> rebuild
        log.warning("change feed of %s unavailable (%s): rebuilding the index", path, error)
        return None
    return {r["product_id"] for r in changes}


def build_index(settings: Settings, run_id: str | None = None, rebuild: bool = False) -> dict:
    """Build or update the ANN index of model version ``run_id`` (default: latest training run).

    Returns ``{model_version, mode (built|updated|unchanged), count, added, removed, path,
    embeddings_version, products_version}``.
    """
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from lookalike.catalogue import table_version
    from lookalike.index import load_index
    from lookalike.spark import get_spark

    run_id, model_dir = resolve_model(settings, run_id)
    info = _read_info(model_dir)
    spark = get_spark(settings)
    path = settings.table_path(settings.catalogue.embeddings_table)
    if not DeltaTable.isDeltaTable(spark, path):
        raise ValueError(f"no embeddings table at {path}: run `lookalike embed` first")
    version = table_version(spark, path)
    current = (spark.read.format("delta").option("versionAsOf", version).load(path)
               .where(F.col("model_version") == run_id))
    history = embedding_history(spark, settings, run_id)
    if history is None:
        raise ValueError(f"no embeddings of model version {run_id} in {path}: "
                         f"run `lookalike embed --run-id {run_id}` first")
    directory = index_dir(settings, run_id)
    dim = int(info["embedding_size"])
    distance = model_distance(info, settings)

    index = None
    changed: set[str] | None = None
    if not rebuild and (directory / "manifest.json").exists():
        try:
            index = load_index(directory)
        except (OSError, ValueError) as error:
            log.warning("saved index %s unreadable (%s): rebuilding", directory, error)
            index = None
        if index is not None:
            meta = index.metadata
            same = (meta.get("model_version") == run_id and meta.get("embeddings_table") == path
                    and index.dim == dim and index.distance == distance
                    and index.backend == settings.index.backend)
            changed = (_changed_since(spark, path, run_id, int(meta["embeddings_version"]),
                                      version) if same else None)
            if changed is None:
                index = None

    added = removed = 0
    if index is None:
        mode = "built"
        ids, vectors, cats = _vectors_frame(current)
        index = _new_index(settings, dim, distance)
        if ids:
            index.add(ids, vectors, cats)
        added = len(ids)
    elif changed:
        mode = "updated"
        ids, vectors, cats = _vectors_frame(current.where(F.col("product_id").isin(list(changed))))
        present = set(ids)
        gone = [i for i in changed if i not in present and index.contains(i)]
        if gone:
            index.remove(gone)
        if ids:
            index.add(ids, vectors, cats)
        added, removed = len(ids), len(gone)
        if index.n_tombstones > max(1000, len(index)):
            index.compact()
    else:
        mode = "unchanged"
    index.metadata.update({
        "model_version": run_id, "embeddings_table": path, "embeddings_version": version,
        "products_version": int(history.get("products_version", -1)),
        "products_table": settings.table_path(settings.catalogue.products_table),
        "built_at": datetime.now(timezone.utc).isoformat(),
    })
    if mode != "unchanged" or not (directory / "manifest.json").exists():
        _save_atomically(index, directory)
    result = {"model_version": run_id, "mode": mode, "count": len(index), "added": added,
              "removed": removed, "path": str(directory), "embeddings_version": version,
              "products_version": index.metadata["products_version"]}
    log.info("build_index: %s", result)
    return result


def _new_index(settings: Settings, dim: int, distance: str):
    from lookalike.index import make_index

    params: dict[str, Any] = {}
    if settings.index.backend == "hnsw":
        params = {"m": settings.index.hnsw_m, "ef_construction": settings.index.ef_construction,
                  "ef_search": settings.index.ef_search}
    return make_index(settings.index.backend, dim, distance, **params)


def _save_atomically(index, directory: Path) -> None:
    """Save next to ``directory`` then swap, so a reader never sees a half-written index."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}-{uuid.uuid4().hex[:8]}")
    index.save(staging)
    old = directory.with_name(f".{directory.name}-old-{uuid.uuid4().hex[:8]}")
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- batch neighbours


def _neighbour_partitions(model_path: str, k: int, batch: int, model_version: str):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import mlflow.pyfunc

        model = None
        for frame in batches:
            if frame.empty:
                continue
            if model is None:
                model = mlflow.pyfunc.load_model(model_path)
            ids = frame["product_id"].tolist()
            for start in range(0, len(ids), batch):
                chunk = ids[start:start + batch]
                out = model.predict(pd.DataFrame({"product_id": chunk}),
                                    params={"k": k, "exclude_self": True})
                yield pd.DataFrame({
                    "product_id": [chunk[q] for q in out["query"]],
                    "rank": out["rank"].astype("int32"),
                    "neighbour_id": out["product_id"],
                    "category": out["category"],
                    "distance": out["distance"].astype("float32"),
                    "model_version": model_version,
                })
    return run


def write_neighbours(settings: Settings, model_uri: str | None = None, k: int | None = None
                     ) -> dict:
    """Top-k neighbours of every indexed product via the pyfunc, to the Delta neighbours table.

    The rows of that model version are overwritten (``replaceWhere``). Returns
    ``{model_uri, model_version, products, rows, k, table_version}``.
    """
    import mlflow

    from lookalike.catalogue import table_version
    from lookalike.serving import (ARTIFACT_INDEX, ARTIFACT_PRODUCTS, default_model_uri,
                                   packaged_artifacts)
    from lookalike.spark import get_spark
    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    model_uri = model_uri or default_model_uri(settings)
    k = int(k or settings.serving.default_k)
    if not 0 < k <= settings.serving.max_k:
        raise ValueError(f"k must be in 1..{settings.serving.max_k}, got {k}")
    local = Path(settings.home_path / "downloads" / "pyfunc" / uuid.uuid4().hex[:12])
    local.mkdir(parents=True, exist_ok=True)
    model_path = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(local)))
    artifacts = packaged_artifacts(model_path)
    manifest = json.loads((artifacts[ARTIFACT_INDEX] / "manifest.json").read_text())
    model_version = str(manifest.get("metadata", {}).get("model_version", ""))
    ids = pd.read_parquet(artifacts[ARTIFACT_PRODUCTS], columns=["product_id"])["product_id"]

    spark = get_spark(settings)
    frame = spark.createDataFrame(pd.DataFrame({"product_id": ids.astype(str)}),
                                  "product_id STRING")
    rows = (frame.repartition(settings.embedding.partitions)
            .mapInPandas(_neighbour_partitions(str(model_path), k, settings.serving.max_batch,
                                               model_version), NEIGHBOURS_SCHEMA))
    path = settings.table_path(settings.catalogue.neighbours_table)
    started = time.time()
    (rows.write.format("delta").mode("overwrite").partitionBy("model_version")
     .option("replaceWhere", f"model_version = '{model_version}'").save(path))
    written = (spark.read.format("delta").load(path)
               .where(f"model_version = '{model_version}'").count())
    shutil.rmtree(local, ignore_errors=True)
    result = {"model_uri": model_uri, "model_version": model_version, "products": int(len(ids)),
              "rows": int(written), "k": k, "table_version": table_version(spark, path),
              "seconds": round(time.time() - started, 1)}
    log.info("write_neighbours: %s", result)
    return result

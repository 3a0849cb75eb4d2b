"""The Spark batch-embedding job: products in Delta -> vectors in the Delta ``embeddings`` table.

:func:`embed_catalogue` embeds products that are new or whose image or category changed
(``content_hash``) since the last run *for the same model version*, and deletes rows of products
no longer in the catalogue. A new model version (training run id) embeds everything. The model
artifact is downloaded once on the driver; executors load it once per Python worker.

Embeddings table: ``product_id, model_version (training run id), vector array<float>,
content_hash, category, embedded_at``, partitioned by model_version. Every write carries commit
``userMetadata`` ``{"model_version", "products_version"}``, so the products table version an
embedding set came from is part of the Delta history (:func:`embedding_history`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Iterator

import numpy as np
import pandas as pd

from lookalike.config import Settings
from lookalike.console import spark_progress

log = logging.getLogger(__name__)

EMBEDDINGS_SCHEMA = (
    "product_id STRING NOT NULL, model_version STRING NOT NULL, vector ARRAY<FLOAT>, "
    "content_hash STRING, category STRING, embedded_at TIMESTAMP"
)
_EMBED_OUT_SCHEMA = "product_id STRING, vector ARRAY<FLOAT>, content_hash STRING, category STRING"
_USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"


def _embed_partitions(model_dir: str, batch_size: int, threads: int, precision: str):
    """mapInPandas body: model loaded once per worker, images embedded ``batch_size`` at a time."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # Module globals are reached by import, never captured: cloudpickle would ship them
        # by value (the driver's model cache included).
        from lookalike.learning import artifacts
        from lookalike.learning.model import configure_threads, gpu_memory_growth
        from lookalike.preprocessing import batch_to_model_input
        from lookalike.spark import chunks_with_model

        def load():
            if not artifacts.is_cached(model_dir, precision):
                # Concurrent partitions share the cores: don't let each take them all.
                configure_threads(intra=threads, inter=1)
                gpu_memory_growth()
            return artifacts.cached_embedding_model(model_dir, precision)

        for model, chunk in chunks_with_model(batches, load, batch_size):
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


_ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


def arrow_rows(mean_image_bytes: float, budget_bytes: int) -> int:
    """Rows per Arrow batch so that a batch of image bytes stays near ``budget_bytes``. Spark's
    default is 10,000 rows whatever their size, gigabytes for photos. The result is between 1
    and 10,000 rows; the model still embeds ``embedding.batch_size`` at a time."""
    return max(1, min(10_000, int(budget_bytes // max(1.0, mean_image_bytes))))


class _SessionConf:
    """Context manager setting one Spark SQL conf for the work inside it, then restoring it
    (Arrow batch rows, Delta commit userMetadata)."""

    def __init__(self, spark, key: str, value: str):
        self.spark, self.key, self.value = spark, key, value

    def __enter__(self):
        self.old = self.spark.conf.get(self.key, None)
        self.spark.conf.set(self.key, self.value)

    def __exit__(self, *exc):
        if self.old is None:
            self.spark.conf.unset(self.key)
        else:
            self.spark.conf.set(self.key, self.old)


def embed_catalogue(settings: Settings, run_id: str | None = None) -> dict:
    """Embed new/changed products with training run ``run_id`` (default: latest) into Delta.

    Returns ``{model_version, embedded, unchanged, removed, products_version, table_version}``.
    """
    from pyspark.sql import functions as F

    from lookalike.catalogue.tables import catalogue_table, create_table, read_products
    from lookalike.learning.artifacts import resolve_model
    from lookalike.runtime import cpu_count
    from lookalike.spark import get_spark

    run_id, model_dir = resolve_model(settings, run_id)
    _require_precision(settings, run_id, model_dir)
    spark = get_spark(settings)
    products, products_version = read_products(spark, settings)
    products = products.select("product_id", "category", "image", "content_hash")
    table = catalogue_table(settings, "embeddings")
    # build_index reads what changed since the index was saved from the change feed.
    create_table(spark, table, EMBEDDINGS_SCHEMA, change_feed=True, partition_by="model_version")

    existing = (table.read(spark)
                .where(F.col("model_version") == run_id)
                .select("product_id", F.col("content_hash").alias("old_hash"),
                        F.col("category").alias("old_category")))
    # Only the small key columns are broadcast: image bytes never cross a shuffle for the join.
    joined = products.join(F.broadcast(existing), "product_id", "left")
    todo = joined.where(F.col("old_hash").isNull()
                        | (F.col("old_hash") != F.col("content_hash"))
                        | (F.col("old_category") != F.col("category"))
                        ).select("product_id", "category", "image", "content_hash")
    removed_ids = existing.select("product_id").join(products.select("product_id"),
                                                     "product_id", "left_anti")
    total = products.count()
    already = existing.limit(1).count() > 0
    removed = removed_ids.count() if already else 0

    batch_size = settings.embedding.batch_size
    partitions = settings.embedding.partitions
    # Arrow batches bounded by bytes: the mean image size from a sample of what is to embed.
    sample = todo.select(F.length("image").alias("n")).limit(1000).agg(F.avg("n")).first()[0]
    rows_per_batch = arrow_rows(float(sample or 0), settings.embedding.arrow_batch_bytes)
    threads = max(1, cpu_count() // min(partitions, spark.sparkContext.defaultParallelism))
    # Image bytes move only when the table has fewer files than the wanted parallelism.
    have = todo.rdd.getNumPartitions()
    todo = todo.coalesce(partitions) if have > partitions else (
        todo.repartition(partitions) if have < partitions else todo)
    vectors = (todo
               .mapInPandas(_embed_partitions(str(model_dir), batch_size, threads,
                                             settings.embedding.precision),
                            _EMBED_OUT_SCHEMA)
               .withColumn("model_version", F.lit(run_id))
               .withColumn("embedded_at", F.current_timestamp())
               .select("product_id", "model_version", "vector", "content_hash", "category",
                       "embedded_at")
               .persist())
    try:
        started = time.perf_counter()
        with spark_progress(spark, "[embed] embedding"), \
                _SessionConf(spark, _ARROW_BATCH_CONF, str(rows_per_batch)):
            embedded = vectors.count()
        embed_seconds = time.perf_counter() - started
        started = time.perf_counter()
        # Delta commit userMetadata: embedding_history reads which model and data a commit has.
        with _SessionConf(spark, _USER_METADATA_CONF, json.dumps(
                {"model_version": run_id, "products_version": products_version},
                sort_keys=True)):
            _write_vectors(spark, table, run_id, vectors if embedded else None,
                           removed_ids if removed else None, first=not already)
        write_seconds = time.perf_counter() - started
    finally:
        vectors.unpersist()
    result = {"model_version": run_id, "embedded": int(embedded),
              "unchanged": int(total - embedded), "removed": int(removed),
              "products_version": int(products_version),
              "table_version": table.version(spark), "arrow_rows_per_batch": rows_per_batch,
              "embed_seconds": round(embed_seconds, 1), "write_seconds": round(write_seconds, 1)}
    log.info("embed_catalogue: %s", result)
    return result


def _require_precision(settings: Settings, run_id: str, model_dir) -> None:
    """embedding.precision=mixed needs a model trained (and exported) with mixed precision."""
    from lookalike.learning.artifacts import read_info

    if settings.embedding.precision == "mixed" and not read_info(model_dir).get("mixed_precision"):
        raise ValueError(f"embedding.precision is mixed but run {run_id}'s model has no "
                         "mixed-precision export (train with training.precision=mixed_float16)")


def _write_vectors(spark, table, run_id: str, vectors, removed_ids, first: bool) -> None:
    """Upsert ``vectors`` and delete ``removed_ids`` (either may be None) of model ``run_id``
    into ``table`` (a :class:`~lookalike.catalogue.tables.CatalogueTable`)."""
    delta = table.delta(spark)
    key = f"t.model_version = '{run_id}' AND t.product_id = s.product_id"
    if vectors is not None and first:
        # First embedding of this model version: a plain append, no MERGE needed.
        table.save(vectors.write.format("delta").mode("append"))
    elif vectors is not None:
        (delta.alias("t").merge(vectors.alias("s"), key)
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    if removed_ids is not None:
        delta.alias("t").merge(removed_ids.alias("s"), key).whenMatchedDelete().execute()


def embedding_history(spark, settings: Settings, run_id: str) -> dict | None:
    """The newest commit userMetadata of the embeddings table for model version ``run_id``."""
    from lookalike.catalogue.tables import catalogue_table

    rows = (catalogue_table(settings, "embeddings").delta(spark).history()
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

"""The catalogue's Delta tables: where they live, their schemas, creating and reading them.

This module alone decides a table's location (:func:`table_path`); every job asks it. Locally the
tables are path tables under ``LOOKALIKE_HOME/warehouse/<catalogue.database>/<name>``.

* ``products``: one row per product with its image bytes as ingested (change data feed on);
* ``rejects``: every file that could not be ingested, with the reason;
* ``embeddings`` (written by :mod:`lookalike.embeddings`) and ``neighbours``
  (:mod:`lookalike.serving.neighbours`).
"""

from __future__ import annotations

import os
from pathlib import Path

from lookalike.config import Settings

PRODUCTS_SCHEMA = (
    "product_id STRING NOT NULL, category STRING NOT NULL, title STRING, image BINARY NOT NULL, "
    "format STRING, width INT, height INT, channels INT, content_hash STRING NOT NULL, "
    "source_uri STRING, split STRING NOT NULL, ingested_at TIMESTAMP"
)
REJECTS_SCHEMA = ("source_uri STRING NOT NULL, reason STRING NOT NULL, detail STRING, "
                  "rejected_at TIMESTAMP")
SPLITS = ("train", "val", "test")
TABLES = ("products", "rejects", "embeddings", "neighbours")


def table_path(settings: Settings, table: str) -> str:
    """Location of catalogue table ``table`` (one of :data:`TABLES`)."""
    if table not in TABLES:
        raise ValueError(f"unknown catalogue table {table!r}; choose one of {TABLES}")
    name = getattr(settings.catalogue, f"{table}_table")
    return str(settings.warehouse_path / settings.catalogue.database / name)


def delta_version(path: str | Path) -> int | None:
    """Latest version of a path table from its ``_delta_log`` (no JVM needed); None if absent."""
    try:
        names = os.listdir(Path(path) / "_delta_log")
    except OSError:
        return None
    versions = [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()]
    return max(versions) if versions else None


def table_version(spark, path: str) -> int:
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, path).history(1).collect()[0]["version"])


def create_table(spark, path: str, schema: str, change_feed: bool = False,
                 partition_by: str | None = None) -> None:
    """Create the Delta table at ``path`` unless it exists."""
    from delta.tables import DeltaTable

    if DeltaTable.isDeltaTable(spark, path):
        return
    builder = (DeltaTable.createIfNotExists(spark).location(path)
               .addColumns(spark.createDataFrame([], schema).schema))
    if partition_by:
        builder = builder.partitionedBy(partition_by)
    if change_feed:
        # Downstream jobs (embedding, index updates) read only what changed from the feed.
        builder = builder.property("delta.enableChangeDataFeed", "true")
    builder.execute()


def ensure_tables(spark, settings: Settings) -> None:
    """Create the products and rejects tables if they do not exist yet."""
    create_table(spark, table_path(settings, "products"), PRODUCTS_SCHEMA, change_feed=True)
    create_table(spark, table_path(settings, "rejects"), REJECTS_SCHEMA)


def read_products(spark, settings: Settings, splits: tuple[str, ...] | None = None,
                  version: int | None = None):
    """The products table (optionally at a past version, optionally some splits) and its version.

    Readers record the version they used so a model can name exactly the data it saw.
    """
    from pyspark.sql import functions as F

    path = table_path(settings, "products")
    if version is None:
        version = table_version(spark, path)
    frame = spark.read.format("delta").option("versionAsOf", version).load(path)
    if splits:
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}; choose from {SPLITS}")
        frame = frame.where(F.col("split").isin(list(splits)))
    return frame, version

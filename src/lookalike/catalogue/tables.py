"""The catalogue's Delta tables: where they live, their schemas, creating and reading them.

This module alone decides where a table lives (:func:`catalogue_table`); every job asks it.

* Locally (``catalogue.table_mode: path``, or ``auto`` off Databricks) the tables are path
  tables under ``LOOKALIKE_HOME/warehouse/<catalogue.database>/<name>``.
* On Databricks (``managed``, or ``auto`` there) they are Unity Catalog managed tables
  ``<catalogue.catalog>.<catalogue.database>.<name>``: Unity Catalog cannot register a table whose
  location is a Volume, so Volumes hold only images and artifacts.

* ``products``: one row per product with its image bytes as ingested (change data feed on);
* ``rejects``: every file that could not be ingested, with the reason;
* ``embeddings`` (written by :mod:`lookalike.embeddings`) and ``neighbours``
  (:mod:`lookalike.serving.neighbours`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lookalike.config import Settings
from lookalike.errors import UsageError

PRODUCTS_SCHEMA = (
    "product_id STRING NOT NULL, category STRING NOT NULL, title STRING, image BINARY NOT NULL, "
    "format STRING, width INT, height INT, channels INT, content_hash STRING NOT NULL, "
    "source_uri STRING, split STRING NOT NULL, ingested_at TIMESTAMP, group_id STRING"
)
REJECTS_SCHEMA = ("source_uri STRING NOT NULL, reason STRING NOT NULL, detail STRING, "
                  "rejected_at TIMESTAMP")
SPLITS = ("train", "val", "test")
TABLES = ("products", "rejects", "embeddings", "neighbours")


@dataclass(frozen=True)
class CatalogueTable:
    """One Delta table, by Unity Catalog name or by path: exactly one of the two is set.

    ``str(table)`` is its reference (recorded in index manifests and model tags);
    :meth:`from_ref` turns such a reference back into a table.
    """

    name: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        return self.name or self.path or ""

    @staticmethod
    def from_ref(ref: str) -> "CatalogueTable":
        """A path has a ``/`` (``/Volumes/...``, ``dbfs:/...``, ``file:/...``); a name has none."""
        return CatalogueTable(path=ref) if "/" in ref else CatalogueTable(name=ref)

    def exists(self, spark) -> bool:
        from delta.tables import DeltaTable

        if self.path:
            return DeltaTable.isDeltaTable(spark, self.path)
        return bool(spark.catalog.tableExists(self.name))

    def delta(self, spark):
        """The :class:`delta.tables.DeltaTable` (merges, deletes, history)."""
        from delta.tables import DeltaTable

        if self.path:
            return DeltaTable.forPath(spark, self.path)
        # Open-source Delta's forName takes at most schema.table: a name in the session's
        # current catalog drops its catalog part (the same table; Databricks takes either).
        parts = self.name.split("`.`")
        if len(parts) == 3 and parts[0].strip("`") == spark.catalog.currentCatalog():
            return DeltaTable.forName(spark, "`" + "`.`".join(parts[1:]))
        return DeltaTable.forName(spark, self.name)

    def read(self, spark, **options):
        """The table as a DataFrame; ``options`` are Delta reader options (``versionAsOf``,
        ``readChangeFeed``, ...)."""
        reader = spark.read.format("delta").options(**{k: str(v) for k, v in options.items()})
        return reader.load(self.path) if self.path else reader.table(self.name)

    def save(self, writer) -> None:
        """Finish a configured ``DataFrameWriter`` (format, mode, options) into this table."""
        if self.path:
            writer.save(self.path)
        else:
            writer.saveAsTable(self.name)

    def version(self, spark) -> int:
        return int(self.delta(spark).history(1).collect()[0]["version"])

    def version_without_spark(self) -> int | None:
        """Latest version read from a path table's log (no JVM); None for managed tables."""
        return delta_version(self.path) if self.path else None


def table_mode(settings: Settings) -> str:
    """``path`` or ``managed``: what ``catalogue.table_mode`` (``auto`` by default) means here."""
    from lookalike.spark import on_databricks

    mode = settings.catalogue.table_mode
    if mode == "auto":
        return "managed" if on_databricks() else "path"
    return mode


def catalogue_table(settings: Settings, table: str) -> CatalogueTable:
    """Where catalogue table ``table`` (one of :data:`TABLES`) lives."""
    if table not in TABLES:
        raise ValueError(f"unknown catalogue table {table!r}; choose one of {TABLES}")
    cat = settings.catalogue
    name = getattr(cat, f"{table}_table")
    if table_mode(settings) == "managed":
        parts = [p for p in (cat.catalog, cat.database, name) if p]
        return CatalogueTable(name=".".join(quote_identifier(p) for p in parts))
    return CatalogueTable(path=str(settings.warehouse_path / cat.database / name))


def quote_identifier(name: str) -> str:
    """``name`` as one SQL identifier: in backticks, a backtick inside doubled."""
    return "`" + str(name).replace("`", "``") + "`"


def sql_string(value: str) -> str:
    """``value`` as a Spark SQL string literal (backslash and quote escaped), for the few
    places that take SQL text, such as Delta's replaceWhere."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def delta_version(path: str | Path) -> int | None:
    """Latest version of a path table from its ``_delta_log`` (no JVM needed); None if absent."""
    try:
        names = os.listdir(Path(path) / "_delta_log")
    except OSError:
        return None
    versions = [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()]
    return max(versions) if versions else None


def create_table(spark, table: CatalogueTable, schema: str, change_feed: bool = False,
                 partition_by: str | None = None) -> None:
    """Create ``table`` (and a managed table's schema) unless it exists."""
    from delta.tables import DeltaTable

    if table.exists(spark):
        _add_missing_columns(spark, table, schema)
        return
    if table.name:
        # SQL, not DeltaTable's builder: its tableName() takes no catalog.schema.table name
        # outside Databricks, and Unity Catalog names have three levels.
        namespace = table.name.rsplit(".", 1)[0]
        if namespace != table.name:
            spark.sql(f"CREATE SCHEMA IF NOT EXISTS {namespace}")
        clauses = [f"CREATE TABLE IF NOT EXISTS {table.name} ({schema}) USING DELTA"]
        if partition_by:
            clauses.append(f"PARTITIONED BY ({partition_by})")
        if change_feed:
            clauses.append("TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
        spark.sql(" ".join(clauses))
        return
    builder = (DeltaTable.createIfNotExists(spark).location(table.path)
               .addColumns(spark.createDataFrame([], schema).schema))
    if partition_by:
        builder = builder.partitionedBy(partition_by)
    if change_feed:
        # Downstream jobs (embedding, index updates) read only what changed from the feed.
        builder = builder.property("delta.enableChangeDataFeed", "true")
    builder.execute()


def _add_missing_columns(spark, table: CatalogueTable, schema: str) -> None:
    """Columns of ``schema`` an older table lacks (e.g. products.group_id), added as nullable:
    a catalogue made by an earlier release keeps working, its history intact."""
    wanted = spark.createDataFrame([], schema).schema
    have = set(table.read(spark).columns)
    missing = [f for f in wanted.fields if f.name not in have]
    if missing:
        target = f"delta.{quote_identifier(table.path)}" if table.path else table.name
        columns = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE {target} ADD COLUMNS ({columns})")


def group_column(frame):
    """products.group_id as a column, null for a table version from before it existed."""
    from pyspark.sql import functions as F

    if "group_id" in frame.columns:
        return F.col("group_id")
    return F.lit(None).cast("string").alias("group_id")


def prepare_unity_catalog(settings: Settings, client=None) -> list[str]:
    """On Databricks, before a job writes anything: the managed tables' schema and the Volume
    holding ``LOOKALIKE_HOME``, created through the workspace API if missing (the bundle
    declares both; this covers a home moved elsewhere). Returns what it made sure of; a
    missing privilege becomes an error that says what to ask for."""
    from databricks.sdk.errors import NotFound, PermissionDenied, Unauthenticated

    from lookalike import workspace
    from lookalike.runtime import volume_of

    wanted: list[tuple[str, ...]] = []
    cat = settings.catalogue
    if table_mode(settings) == "managed" and cat.catalog:
        wanted.append((cat.catalog, cat.database))
    volume = volume_of(settings.home_path)
    if volume:
        wanted += [volume[:2], volume]
    client = client or workspace.api()
    done = []
    for names in dict.fromkeys(wanted):
        what = ("volume " if len(names) == 3 else "schema ") + ".".join(names)
        try:
            if len(names) == 3:
                workspace.ensure_volume(*names, client=client)
            else:
                workspace.ensure_schema(*names, client=client)
        except (PermissionError, PermissionDenied, Unauthenticated, NotFound) as error:
            raise PermissionError(f"{what}: {error}: create it once as an admin, or grant the "
                                  "job's run_as identity USE CATALOG and CREATE SCHEMA / CREATE "
                                  "VOLUME (docs/databricks.md)") from error
        done.append(what)
    return done


def ensure_tables(spark, settings: Settings) -> None:
    """Create the products and rejects tables if they do not exist yet."""
    create_table(spark, catalogue_table(settings, "products"), PRODUCTS_SCHEMA, change_feed=True)
    create_table(spark, catalogue_table(settings, "rejects"), REJECTS_SCHEMA)


def products_version(spark, settings: Settings) -> int:
    """The products table's latest version; before the first ingest, a :class:`UsageError`
    that says what to run (not Delta's "is not a Delta table")."""
    table = catalogue_table(settings, "products")
    if not table.exists(spark):
        raise UsageError(f"no products yet (no table {table}): run `lookalike ingest --source "
                         "fashion-mnist` or `lookalike ingest --source folder PATH` first")
    return table.version(spark)


def read_products(spark, settings: Settings, splits: tuple[str, ...] | None = None,
                  version: int | None = None):
    """The products table (optionally at a past version, optionally some splits) and its version.

    Readers record the version they used so a model can name exactly the data it saw.
    """
    from pyspark.sql import functions as F

    table = catalogue_table(settings, "products")
    if version is None:
        version = products_version(spark, settings)
    frame = table.read(spark, versionAsOf=version)
    if splits:
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}; choose from {SPLITS}")
        frame = frame.where(F.col("split").isin(list(splits)))
    return frame, version

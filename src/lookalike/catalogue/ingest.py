"""Ingestion: candidate rows from a source -> validated rows -> MERGE into ``products``.

Every file is decoded and checked (:func:`lookalike.preprocessing.inspect_image`); bad ones go to
``rejects`` with a reason. Ingestion computes the diff against the table first and MERGEs only
new or changed rows, so an unchanged rerun writes nothing and leaves the table version as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

from lookalike.catalogue.tables import CatalogueTable, catalogue_table, ensure_tables
from lookalike.config import Settings
from lookalike.console import say
from lookalike.errors import UsageError
from lookalike.preprocessing import ImageRejected, inspect_image

_VALIDATED_SCHEMA = (
    "product_id STRING, category STRING, title STRING, group_id STRING, image BINARY, "
    "format STRING, width INT, height INT, channels INT, content_hash STRING, source_uri STRING, "
    "split STRING, reason STRING, detail STRING"
)
_CANDIDATE_SCHEMA = ("product_id STRING, category STRING, title STRING, group_id STRING, "
                     "image BINARY, source_uri STRING")


@dataclass(frozen=True)
class IngestSummary:
    source: str
    inserted: int
    updated: int
    unchanged: int
    rejected: int
    table_version: int
    # Products of a full snapshot (a folder) whose file is gone, deleted from the table.
    deleted: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


def split_for(key: str, train: float, val: float) -> str:
    """Deterministic split from a stable hash of ``key``. Ingest keys on the image's content
    hash: identical images always share a split (no copy of a test image in train), and
    reruns never move an unchanged item."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    fraction = bucket / 2**64
    if fraction < train:
        return "train"
    if fraction < train + val:
        return "val"
    return "test"


def split_key(group_id: str | None, content_hash: str) -> str:
    """What a photo's split hashes: its product (``group_id``) when the catalogue names one, so
    every photo of a product lands in one split, as In-Shop and SOP keep products disjoint
    (else the same-product figures score products the model trained on); else its content,
    so byte-identical files share a split."""
    return f"group:{group_id}" if group_id else content_hash


def validate_rows(rows: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Decode-check each candidate row; add image facts, hash and split, or a reject reason.

    Expects columns product_id, category, title, group_id, image, source_uri and optionally
    official_split ("train"/"test", as Fashion-MNIST has). Pure: used inside mapInPandas.
    """
    cat = settings.catalogue
    out = []
    for row in rows.itertuples(index=False):
        record = {"product_id": row.product_id, "category": row.category,
                  "title": row.title if row.title else None,
                  "group_id": getattr(row, "group_id", None) or None, "image": None,
                  "format": None,
                  "width": None, "height": None, "channels": None, "content_hash": None,
                  "source_uri": row.source_uri, "split": None, "reason": None, "detail": None}
        data = bytes(row.image) if row.image is not None else b""
        try:
            info = inspect_image(data, cat.max_image_bytes, cat.max_pixels, cat.allowed_formats)
            if not row.product_id:
                raise ImageRejected("no_product_id", "no product_id for this file")
            if not row.category:
                raise ImageRejected("no_category", "no category for this file")
        except ImageRejected as rejected:
            record.update(reason=rejected.reason, detail=rejected.detail[:500])
            out.append(record)
            continue
        content_hash = hashlib.sha256(data).hexdigest()
        official = getattr(row, "official_split", None)
        if official == "test":
            split = "test"
        elif official == "train":
            # Keep Fashion-MNIST's official test set; carve validation out of its training set.
            val = cat.fashion_mnist_val_fraction
            split = split_for(content_hash, 1.0 - val, val)
        else:
            split = split_for(split_key(record["group_id"], content_hash), cat.split.train,
                              cat.split.val)
        record.update(image=data, format=info.format, width=info.width, height=info.height,
                      channels=info.channels, content_hash=content_hash, split=split)
        out.append(record)
    return pd.DataFrame(out, columns=[c.split()[0] for c in _VALIDATED_SCHEMA.split(", ")])


# Spark reports file:/... locally and dbfs:/Volumes/... on Databricks for the same kind of path.
_SCHEME = r"^(file|dbfs):/*"


def local_path(uri: str) -> str:
    """A file URI as a plain absolute path: ``dbfs:/Volumes/x`` and ``file:///x`` -> ``/x``."""
    return re.sub(_SCHEME, "/", str(uri))


def _local_path_column(column):
    from pyspark.sql import functions as F

    return F.regexp_replace(column, _SCHEME, "/")


def upsert_validated(spark, settings: Settings, validated, source: str,
                     snapshot_root: str | None = None) -> IngestSummary:
    """MERGE validated rows into products and record rejects; return the summary.

    ``validated`` is a Spark DataFrame in the ``_VALIDATED_SCHEMA`` layout. Rows whose content
    hash, category, title and split equal the stored ones are left alone, so unchanged data
    never creates a new table version; a changed split setting moves the rows it concerns.
    With ``snapshot_root`` the source is a full snapshot of that folder: products whose file
    under it is gone are deleted (a file that is still there but now rejected keeps its last
    good version).
    """
    from pyspark.sql import functions as F

    ensure_tables(spark, settings)
    products = catalogue_table(settings, "products")
    rejects_table = catalogue_table(settings, "rejects")
    validated = validated.persist()
    try:
        good = validated.where(F.col("reason").isNull()).drop("reason", "detail")
        bad = validated.where(F.col("reason").isNotNull())

        duplicates = good.groupBy("product_id").count().where("count > 1").limit(5).collect()
        if duplicates:
            raise ValueError(f"source repeats product_id {[r['product_id'] for r in duplicates]}")

        stored = products.read(spark)
        current = stored.select("product_id", F.col("content_hash").alias("old_hash"),
                                F.col("category").alias("old_category"),
                                F.col("title").alias("old_title"),
                                F.col("group_id").alias("old_group"),
                                F.col("split").alias("old_split"))
        # Only key columns of the table are broadcast: the image bytes never cross a shuffle.
        diff = good.join(F.broadcast(current), "product_id", "left").withColumn(
            "change",
            F.when(F.col("old_hash").isNull(), F.lit("insert"))
            .when((F.col("old_hash") != F.col("content_hash"))
                  | (F.col("old_category") != F.col("category"))
                  | ~F.col("old_title").eqNullSafe(F.col("title"))
                  | ~F.col("old_group").eqNullSafe(F.col("group_id"))
                  | (F.col("old_split") != F.col("split")), F.lit("update"))
            .otherwise(F.lit("unchanged"))).persist()
        counts = {r["change"]: r["count"] for r in diff.groupBy("change").count().collect()}
        changed = (diff.where(F.col("change") != "unchanged")
                   .drop("old_hash", "old_category", "old_title", "old_group", "old_split",
                         "change")
                   .withColumn("ingested_at", F.current_timestamp()))
        if counts.get("insert", 0) + counts.get("update", 0) > 0:
            (products.delta(spark).alias("t")
             .merge(changed.alias("s"), "t.product_id = s.product_id")
             .whenMatchedUpdateAll()
             .whenNotMatchedInsertAll()
             .execute())
        diff.unpersist()
        deleted = (_delete_gone(spark, products, stored, good, bad, snapshot_root)
                   if snapshot_root else 0)

        rejected = bad.count()
        if rejected:
            rejects = (bad.select("source_uri", "reason", "detail")
                       .dropDuplicates(["source_uri"])
                       .withColumn("rejected_at", F.current_timestamp()))
            # One row per file and reason: a rerun over the same bad file adds nothing.
            (rejects_table.delta(spark).alias("t")
             .merge(rejects.alias("s"), "t.source_uri = s.source_uri AND t.reason = s.reason")
             .whenNotMatchedInsertAll()
             .execute())
            # Said, not only recorded: a shop should not need a query to learn why.
            examples = [f"{r['source_uri'].rsplit('/', 1)[-1]}: {r['reason']}"
                        for r in bad.select("source_uri", "reason").limit(3).collect()]
            say("ingest", f"{rejected} rejected ({'; '.join(examples)}"
                f"{', ...' if rejected > len(examples) else ''}); every file and reason: "
                f"table {rejects_table}")
        return IngestSummary(source=source, inserted=counts.get("insert", 0),
                             updated=counts.get("update", 0),
                             unchanged=counts.get("unchanged", 0), rejected=rejected,
                             table_version=products.version(spark),
                             deleted=deleted)
    finally:
        validated.unpersist()


def _under(frame, root: str):
    """The rows of ``frame`` whose ``source_uri`` is a file under folder ``root``."""
    from pyspark.sql import functions as F

    prefix = local_path(root).rstrip("/") + "/"
    return frame.where(_local_path_column(F.col("source_uri")).startswith(prefix))


def _products_under(spark, settings: Settings, root: Path) -> int:
    """How many products the table holds from files under ``root`` (0 before any ingest)."""
    table = catalogue_table(settings, "products")
    return _under(table.read(spark), str(root)).count() if table.exists(spark) else 0


def _delete_gone(spark, products: CatalogueTable, stored, good, bad, root: str) -> int:
    """Delete products under ``root`` that the snapshot no longer has; the count."""
    gone = (_under(stored, root).select("product_id", "source_uri")
            .join(good.select("product_id"), "product_id", "left_anti")
            .join(bad.select("source_uri"), "source_uri", "left_anti")
            .select("product_id").persist())
    try:
        count = gone.count()
        if count:
            (products.delta(spark).alias("t")
             .merge(gone.alias("s"), "t.product_id = s.product_id")
             .whenMatchedDelete().execute())
        return count
    finally:
        gone.unpersist()


def _validate_partitions(settings: Settings):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield validate_rows(batch, settings)
    return run


def ingest_candidates(spark, settings: Settings, rows: pd.DataFrame, source: str) -> IngestSummary:
    """Validate candidate rows (see :func:`validate_rows`) on Spark and upsert them."""
    for optional in ("official_split", "group_id"):
        if optional not in rows.columns:
            rows = rows.assign(**{optional: None})
    candidates = spark.createDataFrame(
        rows[["product_id", "category", "title", "group_id", "image", "source_uri",
              "official_split"]], _CANDIDATE_SCHEMA + ", official_split STRING")
    validated = candidates.repartition(settings.catalogue.ingest_partitions).mapInPandas(
        _validate_partitions(settings), _VALIDATED_SCHEMA)
    return upsert_validated(spark, settings, validated, source)


def ingest_fashion_mnist(spark, settings: Settings, limit_per_split: int | None = None
                         ) -> IngestSummary:
    """Ingest Fashion-MNIST (Debian package files, else downloaded): all 70,000 images, or the
    first ``limit_per_split`` of its train and test sets (small catalogues for tests)."""
    from lookalike.catalogue.sources import fashion_mnist_rows, locate_fashion_mnist

    folder = locate_fashion_mnist(settings.catalogue.fashion_mnist_dir,
                                  settings.catalogue.fashion_mnist_url,
                                  settings.home_path / "downloads" / "fashion-mnist")
    rows = fashion_mnist_rows(folder, limit_per_split)
    return ingest_candidates(spark, settings, rows, "fashion-mnist")


def ingest_folder(spark, settings: Settings, folder: str, metadata_csv: str | None = None
                  ) -> IngestSummary:
    """Ingest every file under ``folder`` through Spark's binaryFile source.

    Without metadata, the category is the first sub-folder name and the product_id is the
    path relative to ``folder`` without its extension (two files that would share one, like
    ``x.jpg`` and ``x.png``, are both rejected). With a metadata CSV, files are matched by its
    ``path`` column (relative to ``folder``): files it does not list are rejected, and so are
    its rows that name no file. Symbolic links are never followed (each is a reject):
    :func:`lookalike.catalogue.sources.list_folder`.
    """
    from pyspark.sql import functions as F

    from lookalike.catalogue.sources import ambiguous_files, list_folder, read_metadata_csv

    root = Path(local_path(folder)).resolve()
    if not root.is_dir():
        raise UsageError(f"image folder {folder} does not exist")
    # The CSV first: a wrong one is refused before anything is listed or written.
    metadata = read_metadata_csv(metadata_csv) if metadata_csv else None
    listing = list_folder(root)
    if not listing.files:
        # The folder is a full snapshot: with no file in it (a Volume not mounted, a wrong
        # path, only symbolic links) every product ingested from it would be deleted.
        unread = f"; {len(listing.rejects)} entries not read, e.g. symbolic links" \
            if listing.rejects else ""
        held = _products_under(spark, settings, root)
        if held:
            raise UsageError(f"no files under {folder}{unread}: nothing ingested. A folder "
                             f"ingest is a full snapshot: it would have deleted the {held} "
                             "products ingested from there")
        say("ingest", f"no files under {folder}{unread}: nothing to ingest (expected "
            "<folder>/<category>/<image>, or any layout with --metadata CSV)")
    by_relative = {path.relative_to(root).as_posix(): path for path in listing.files}
    rejects = list(listing.rejects)
    skipped = set()
    if metadata is None:
        for relative, detail in ambiguous_files(by_relative).items():
            rejects.append((str(by_relative[relative]), "duplicate_product_id", detail))
            skipped.add(relative)
    else:
        # normpath turns "./a.png" into "a.png", matching the files' relative paths.
        metadata["path"] = metadata["path"].map(lambda p: os.path.normpath(p).replace(os.sep, "/"))
        linked = {Path(path).relative_to(root).as_posix() for path, _, _ in listing.rejects}
        for product_id, path in zip(metadata["product_id"], metadata["path"]):
            if path not in by_relative and path not in linked:
                rejects.append((str(root / path), "missing_file",
                                f"metadata row {product_id!r} names {path!r}: no such file "
                                "in the folder"[:500]))
    empty = [path for relative, path in by_relative.items()
             if relative not in skipped and path.stat().st_size == 0]
    readable = [path for relative, path in by_relative.items()
                if relative not in skipped and path not in empty]
    uri = _qualifier(spark, root)
    files_df = _binary_files(spark, readable)
    limit = settings.catalogue.max_image_bytes
    # The length filter is pushed into the file source: a file over the byte limit is never
    # read, only listed (its size comes from the file system) and rejected.
    files = files_df.where(F.col("length") <= limit).select("path", "content", "length")
    too_large = files_df.where(F.col("length") > limit).select(
        F.col("path").alias("source_uri"), F.lit("too_large").alias("reason"),
        F.concat(F.col("length").cast("string"),
                 F.lit(f" bytes exceeds limit of {limit} (file not read)")).alias("detail"))
    # binaryFile gives file:/ (local) or dbfs:/Volumes/ (Databricks) URIs; the path relative to
    # the root, scheme removed, is the stable product key either way.
    files = files.withColumn("relative",
                             F.substring(_local_path_column(F.col("path")), len(str(root)) + 2,
                                         1 << 20))
    if metadata is not None:
        meta_df = spark.createDataFrame(metadata)
        candidates = files.join(meta_df, files["relative"] == meta_df["path"], "left").select(
            "product_id", "category", "title", "group_id", F.col("content").alias("image"),
            files["path"].alias("source_uri"))
    else:
        candidates = files.select(
            # The rule of lookalike.catalogue.sources.product_key.
            F.regexp_replace("relative", r"\.[^./]+$", "").alias("product_id"),
            F.when(F.instr("relative", "/") > 0, F.substring_index("relative", "/", 1))
            .otherwise(F.lit(None)).alias("category"),
            F.lit(None).cast("string").alias("title"),
            F.lit(None).cast("string").alias("group_id"),
            F.col("content").alias("image"),
            F.col("path").alias("source_uri"))
    if empty:
        # binaryFile skips zero-byte files silently: a shop should see them in rejects.
        candidates = candidates.unionByName(spark.createDataFrame(
            [(None, None, None, None, b"", uri(path)) for path in empty], _CANDIDATE_SCHEMA))
    unread = spark.createDataFrame([(uri(path), reason, detail) for path, reason, detail
                                    in rejects], "source_uri STRING, reason STRING, detail STRING")
    validated = (candidates.mapInPandas(_validate_partitions(settings), _VALIDATED_SCHEMA)
                 .unionByName(_as_rejects(too_large)).unionByName(_as_rejects(unread)))
    return upsert_validated(spark, settings, validated, f"folder:{root}",
                            snapshot_root=str(root))


def _as_rejects(frame):
    """Rejects (source_uri, reason, detail) in the validated rows' layout."""
    from pyspark.sql import functions as F

    nothing = {"product_id": "string", "category": "string", "title": "string",
               "group_id": "string", "image": "binary", "format": "string", "width": "int",
               "height": "int", "channels": "int", "content_hash": "string"}
    return frame.select(*[F.lit(None).cast(t).alias(c) for c, t in nothing.items()],
                        "source_uri", F.lit(None).cast("string").alias("split"),
                        "reason", "detail")


# Hadoop reads these characters in a path as a glob pattern; a backslash makes them literal.
_GLOB = re.compile(r"([\\\[\]{}*?])")


def _binary_files(spark, paths: list[Path]):
    """Spark's binaryFile rows (path, length, content, ...) of exactly these files."""
    if not paths:
        return spark.createDataFrame([], "path STRING, modificationTime TIMESTAMP, "
                                         "length LONG, content BINARY")
    return spark.read.format("binaryFile").load([_GLOB.sub(r"\\\1", str(p)) for p in paths])


def _qualifier(spark, root: Path):
    """path -> the URI Spark's file sources give that file (file:/... locally,
    dbfs:/Volumes/... on Databricks): rejects found by the listing read like the others."""
    jvm = spark.sparkContext._jvm
    fs = jvm.org.apache.hadoop.fs.Path(str(root)).getFileSystem(
        spark.sparkContext._jsc.hadoopConfiguration())
    return lambda path: fs.makeQualified(jvm.org.apache.hadoop.fs.Path(str(path))).toString()

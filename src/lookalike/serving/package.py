"""Packaging: a training run's model + its index + product metadata -> a registered pyfunc.

:func:`package_and_register` logs the pyfunc (:mod:`lookalike.serving.pyfunc`) in a run tagged
``lookalike.kind=package`` (param ``training_run_id``, the training run's metrics copied),
registers it as ``registry.model_name`` with alias ``challenger`` and tags ``training_run``,
``delta_version`` (products table version its embeddings came from), ``embeddings_version`` and
``index_size`` (:func:`lookalike.registry.register_version`), and ``lookalike.based_on_champion``
(the champion when it was packaged: promotion refuses it if that has changed since).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd

from lookalike.config import Settings
from lookalike.console import say
from lookalike.errors import UsageError
from lookalike.index import IndexManifest, IndexProvenance
from lookalike.registry import BASED_ON_TAG, CHALLENGER, NO_CHAMPION, champion, register_version

log = logging.getLogger(__name__)


def _thumbnails(max_side: int):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from lookalike.preprocessing import thumbnail_png

        for frame in batches:
            yield pd.DataFrame({
                "product_id": frame["product_id"], "category": frame["category"],
                "title": frame["title"], "group_id": frame["group_id"],
                "thumbnail": [thumbnail_png(bytes(b), max_side) for b in frame["image"]],
            })
    return run


def write_products_folder(settings: Settings, run_id: str, provenance: IndexProvenance,
                          directory: Path) -> int:
    """The packaged catalogue (:mod:`lookalike.serving.catalogue_file`) of the indexed products:
    the ids of the index's embeddings version, the metadata of the current products table (so a
    title-only change reaches the next package); streamed to the driver row by row. Returns the
    row count."""
    from pyspark.sql import functions as F

    from lookalike.catalogue.tables import CatalogueTable, group_column, read_products
    from lookalike.serving.catalogue_file import write_catalogue
    from lookalike.spark import get_spark

    spark = get_spark(settings)
    # Metadata (titles, categories) as the catalogue has it now; products deleted since the
    # index was built keep the metadata of the version it was built from.
    current, _ = read_products(spark, settings)
    pinned, _ = read_products(spark, settings, version=provenance.products_version)
    current, pinned = (f.withColumn("group_id", group_column(f)) for f in (current, pinned))
    products = current.unionByName(pinned.join(current.select("product_id"), "product_id",
                                               "left_anti"))
    embedded = (CatalogueTable.from_ref(provenance.embeddings_table)
                .read(spark, versionAsOf=provenance.embeddings_version)
                .where(F.col("model_version") == run_id).select("product_id"))
    rows = (products.join(embedded, "product_id", "inner")
            .select("product_id", "category", "title", "group_id", "image")
            .mapInPandas(_thumbnails(settings.serving.thumbnail_size),
                         "product_id STRING, category STRING, title STRING, group_id STRING, "
                         "thumbnail BINARY"))
    return write_catalogue(((r["product_id"], r["category"], r["title"], r["group_id"],
                             None if r["thumbnail"] is None else bytes(r["thumbnail"]))
                            for r in rows.toLocalIterator()), directory)


def unmatched_garments(garments: dict, categories) -> list[str]:
    """Garments of ``look.garments`` none of whose categories the catalogue has: their
    lookalikes would come from any category (a typo such as ``T-shirt`` for ``T-Shirt``)."""
    have = set(categories)
    return sorted(g for g, wanted in garments.items() if wanted and not have & set(wanted))


def package_and_register(settings: Settings, run_id: str | None = None,
                         tags: dict | None = None) -> dict:
    """Log, register and alias-as-challenger the pyfunc of training run ``run_id`` (default:
    latest). Needs ``embed`` and ``build-index`` for that run first. ``tags`` go on the
    package run and the model version (e.g. the job run that made them)."""
    import mlflow

    from lookalike.index.build import index_dir
    from lookalike.learning.artifacts import convert_once, read_info, resolve_model
    from lookalike.serving.pyfunc import log_lookalike_model
    from lookalike.tracking import KIND_TAG, configure_mlflow

    configure_mlflow(settings)
    run_id, model_dir = resolve_model(settings, run_id)
    unmatched = (unmatched_garments(settings.look.garments, read_info(model_dir)["categories"])
                 if settings.look.enabled else [])
    if unmatched:
        say("package", f"look.garments: {unmatched} name none of the catalogue's categories: "
            "their lookalikes come from any category (a spelling mistake?)")
    if settings.serving.engine == "tflite":
        convert_once(model_dir)
    training = mlflow.get_run(run_id)
    index_path = index_dir(settings, run_id)
    if not IndexManifest.exists(index_path):
        raise UsageError(f"no index for training run {run_id} at {index_path}: run "
                         f"`lookalike embed --run-id {run_id}` and `lookalike build-index` first")
    manifest = IndexManifest.read(index_path)
    meta = manifest.provenance
    if meta is None or meta.model_version != run_id:
        built_for = meta.model_version if meta else None
        raise UsageError(f"index at {index_path} was built for model {built_for!r}, "
                         f"not {run_id!r}: rerun build-index")
    name = settings.registry.model_name
    scratch = Path(tempfile.mkdtemp(prefix="lookalike-package-"))
    try:
        products_path = scratch / "products"
        n_products = write_products_folder(settings, run_id, meta, products_path)
        with mlflow.start_run(run_name=f"package-{run_id[:8]}",
                              tags={KIND_TAG: "package", "lookalike.training_run": run_id,
                                    **(tags or {})}) as run:
            mlflow.log_params({"training_run_id": run_id,
                               "products_version": meta.products_version,
                               "embeddings_version": meta.embeddings_version,
                               "index_backend": manifest.backend,
                               "index_size": manifest.count})
            if training.data.metrics:
                mlflow.log_metrics(dict(training.data.metrics))
            info = log_lookalike_model(settings, model_dir, index_path, products_path)
            package_run = run.info.run_id
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    current = champion(settings)
    # Promotion refuses this version if the champion moves before it gets there.
    tags = {BASED_ON_TAG: NO_CHAMPION if current is None else str(current.version),
            "training_run": run_id, "delta_version": str(meta.products_version),
            "embeddings_version": str(meta.embeddings_version),
            "index_size": str(manifest.count), "package_run": package_run, **(tags or {})}
    version = register_version(settings, info.model_uri, tags)
    result = {"model_name": name, "version": int(version.version),
              "logged_model_uri": info.model_uri,
              "model_uri": f"models:/{name}/{version.version}", "alias": CHALLENGER,
              "package_run_id": package_run, "training_run_id": run_id,
              "index_size": manifest.count, "products": n_products,
              "delta_version": meta.products_version}
    if unmatched:
        result["look_garments_unmatched"] = unmatched
    log.info("package_and_register: %s", result)
    return result

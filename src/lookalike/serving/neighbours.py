"""Batch "more like this": top-k neighbours of every product through the packaged pyfunc (the
same code path as the REST server) into the Delta ``neighbours`` table (``lookalike recommend``).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

import pandas as pd

from lookalike.config import Settings
from lookalike.errors import UsageError

log = logging.getLogger(__name__)

NEIGHBOURS_SCHEMA = (
    "product_id STRING NOT NULL, rank INT NOT NULL, neighbour_id STRING NOT NULL, "
    "category STRING, distance FLOAT, model_version STRING NOT NULL"
)


def _neighbour_partitions(model_path: str, k: int, batch: int, model_version: str):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import mlflow.pyfunc

        from lookalike.serving.recommender import as_frame
        from lookalike.spark import chunks_with_model

        for model, frame in chunks_with_model(batches, lambda: mlflow.pyfunc.load_model(
                model_path), batch):
            chunk = frame["product_id"].tolist()
            out = as_frame(model.predict(pd.DataFrame({"product_id": chunk}),
                                         params={"k": k, "exclude_self": True}))
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
    from pyspark.sql import functions as F

    from lookalike.catalogue.tables import catalogue_table, sql_string
    from lookalike.index import IndexManifest
    from lookalike.serving.pyfunc import (
        ARTIFACT_INDEX,
        ARTIFACT_PRODUCTS,
        packaged_artifacts,
    )
    from lookalike.serving.catalogue_file import ServingCatalogue
    from lookalike.serving.server import default_model_uri
    from lookalike.spark import get_spark
    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    model_uri = model_uri or default_model_uri(settings)
    k = int(settings.serving.default_k if k is None else k)
    if not 0 < k <= settings.serving.max_k:
        raise UsageError(f"k must be in 1..{settings.serving.max_k} (serving.max_k), got {k}")
    local = Path(settings.home_path / "downloads" / "pyfunc" / uuid.uuid4().hex[:12])
    local.mkdir(parents=True, exist_ok=True)
    model_path = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(local)))
    artifacts = packaged_artifacts(model_path)
    provenance = IndexManifest.read(artifacts[ARTIFACT_INDEX]).provenance
    model_version = provenance.model_version if provenance else ""
    ids = pd.Series(ServingCatalogue(artifacts[ARTIFACT_PRODUCTS]).ids)

    spark = get_spark(settings)
    frame = spark.createDataFrame(pd.DataFrame({"product_id": ids.astype(str)}),
                                  "product_id STRING")
    rows = (frame.repartition(settings.embedding.partitions)
            .mapInPandas(_neighbour_partitions(str(model_path), k, settings.serving.max_batch,
                                               model_version), NEIGHBOURS_SCHEMA))
    table = catalogue_table(settings, "neighbours")
    started = time.time()
    table.save(rows.write.format("delta").mode("overwrite").partitionBy("model_version")
               .option("replaceWhere", f"model_version = {sql_string(model_version)}"))
    written = table.read(spark).where(F.col("model_version") == model_version).count()
    shutil.rmtree(local, ignore_errors=True)
    result = {"model_uri": model_uri, "model_version": model_version, "products": int(len(ids)),
              "rows": int(written), "k": k, "table_version": table.version(spark),
              "seconds": round(time.time() - started, 1)}
    log.info("write_neighbours: %s", result)
    return result

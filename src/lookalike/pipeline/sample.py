"""A small browsable sample of the catalogue for the demo app (parquet; the app reads no Delta)."""

from __future__ import annotations

import os
from pathlib import Path

from lookalike.app_env import catalogue_sample_path
from lookalike.catalogue.tables import catalogue_table
from lookalike.config import Settings
from lookalike.pipeline.engine import Step
from lookalike.preprocessing import thumbnail_png


def export_catalogue_sample(settings: Settings, n: int = 200, path: str | Path | None = None,
                            spark=None) -> dict:
    """Write a small browsable sample of the catalogue for the Streamlit app.

    Parquet with columns ``product_id, category, title, thumbnail`` (PNG bytes, longest side
    <= 160 px), about ``n`` rows spread evenly over categories, chosen by a stable hash of
    product_id (the same rows on every export of the same catalogue). The app reads it instead
    of Delta, so it needs no JVM. Returns ``{path, rows, products_version}``.
    """
    import pandas as pd
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from lookalike.catalogue.tables import read_products
    from lookalike.spark import get_spark

    spark = spark or get_spark(settings)
    products, version = read_products(spark, settings)
    categories = products.select("category").distinct().count()
    per_category = max(1, -(-n // max(1, categories)))
    window = Window.partitionBy("category").orderBy(F.xxhash64("product_id"), "product_id")
    rows = (products.select("product_id", "category", "title", "image")
            .withColumn("_rank", F.row_number().over(window))
            .where(F.col("_rank") <= per_category)
            .orderBy(F.xxhash64("product_id"), "product_id")
            .limit(n)
            .drop("_rank")
            .toPandas())
    frame = pd.DataFrame({
        "product_id": rows["product_id"].astype(str),
        "category": rows["category"].astype(str),
        "title": rows["title"],
        "thumbnail": [thumbnail_png(bytes(b), 160) for b in rows["image"]],
    })
    target = Path(path) if path else catalogue_sample_path(settings.home_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, target)
    return {"path": str(target), "rows": int(len(frame)), "products_version": int(version)}


def sample_step(n: int = 200) -> Step:
    """The sample export as a skippable step (run by :func:`run_demo`)."""
    return Step(
        "export-sample",
        lambda ctx: {"products_version": catalogue_table(ctx.settings, "products")
                     .version_without_spark(),
                     "n": n,
                     "path": str(catalogue_sample_path(ctx.settings.home_path))},
        lambda ctx: export_catalogue_sample(ctx.settings, n),
        lambda ctx, out: Path(out.get("path", "")).exists())

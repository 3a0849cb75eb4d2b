"""The one place a SparkSession is made.

On Databricks the active session already has Delta Lake, so it is reused as is. Locally we start
``spark.master`` with the Delta extensions, loading the Delta jars from a local folder that
``make setup`` fills with ``mvn dependency:copy`` (so tests never reach the network), falling back
to ``spark.jars.packages`` (Ivy from Maven Central) on a machine that never ran the setup.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from lookalike.config import Settings
from lookalike.runtime import on_databricks  # noqa: F401 - callers ask lookalike.spark


def delta_jars(settings: Settings) -> list[str]:
    """Delta jars from ``spark.jars_dir`` or the venv's ``share/lookalike/jars``; [] if none."""
    folder = Path(settings.spark.jars_dir) if settings.spark.jars_dir else default_jars_dir()
    wanted = f"_{settings.spark.scala_version}-{settings.spark.delta_version}.jar"
    jars = sorted(glob.glob(str(folder / "*.jar")))
    if not any(j.endswith(wanted) for j in jars):
        return []
    return jars


def default_jars_dir() -> Path:
    return Path(sys.prefix) / "share" / "lookalike" / "jars"


def get_spark(settings: Settings):
    """Return the active session (Databricks) or a local Delta-enabled one (created once)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if on_databricks():
        return SparkSession.builder.getOrCreate()

    warehouse = settings.warehouse_path
    warehouse.mkdir(parents=True, exist_ok=True)
    # Spark workers must run this interpreter, not whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Local mode stays on loopback (otherwise Spark binds the first non-loopback interface).
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(settings.spark.master)
        .appName(settings.spark.app_name)
        .config("spark.driver.memory", settings.spark.driver_memory)
        .config("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog",
                "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.warehouse.dir", str(warehouse / "spark-warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={warehouse}")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        # Tables are small; the default 200 files per MERGE would dominate run time.
        .config("spark.databricks.delta.merge.repartitionBeforeWrite.enabled", "true")
        # MERGE sources here are persisted DataFrames: copying them again is wasted work.
        .config("spark.databricks.delta.merge.materializeSource", "none")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
    )
    jars = delta_jars(settings)
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    else:
        coordinates = (f"io.delta:delta-spark_{settings.spark.scala_version}:"
                       f"{settings.spark.delta_version}")
        builder = builder.config("spark.jars.packages", coordinates)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def chunks_with_model(batches, load_model, chunk_rows: int):
    """For ``mapInPandas`` bodies: yield ``(model, chunk)`` for chunks of at most ``chunk_rows``
    rows of the non-empty Arrow batches, calling ``load_model()`` once, on the first one (an
    empty partition never loads a model)."""
    model = None
    for frame in batches:
        if frame.empty:
            continue
        if model is None:
            model = load_model()
        for start in range(0, len(frame), chunk_rows):
            yield model, frame.iloc[start:start + chunk_rows]

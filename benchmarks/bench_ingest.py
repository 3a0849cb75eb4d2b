"""Benchmark: full Fashion-MNIST ingest into a fresh Delta catalogue, then an unchanged rerun.

Run: .venv/bin/python -m benchmarks.bench_ingest [--home DIR]
Prints one JSON line: rows, wall seconds and rows/s of the first ingest and of the rerun.
Target (issue 2): 70,000 rows in under 60 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from lookalike.catalogue.ingest import ingest_fashion_mnist
from lookalike.config import load_settings
from lookalike.spark import get_spark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="LOOKALIKE_HOME to use (default: a fresh temp dir)")
    args = parser.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="lookalike-bench-")
    settings = load_settings(overrides={"home": home})
    started = time.perf_counter()
    spark = get_spark(settings)
    session_seconds = time.perf_counter() - started

    started = time.perf_counter()
    first = ingest_fashion_mnist(spark, settings)
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    rerun = ingest_fashion_mnist(spark, settings)
    rerun_seconds = time.perf_counter() - started
    rows = first.inserted + first.updated + first.unchanged
    print(json.dumps({
        "benchmark": "ingest_fashion_mnist", "rows": rows, "rejected": first.rejected,
        "spark_session_s": round(session_seconds, 1),
        "first_ingest_s": round(first_seconds, 1), "rows_per_s": round(rows / first_seconds),
        "rerun_s": round(rerun_seconds, 1), "rerun_unchanged": rerun.unchanged,
        "version_after_first": first.table_version, "version_after_rerun": rerun.table_version,
        "target_s": 60, "target_met": first_seconds < 60,
    }))


if __name__ == "__main__":
    main()

"""Benchmark: the simple pixel baselines of protocols (a) and (b) on Fashion-MNIST, each
variant (pixels as stored, inverted, centred on the catalogue's mean; cosine), and which one
is the strongest: what every model figure is compared with (issue 21: "met" against the
weakest baseline was not met). No training: minutes on 2 cores.

Run: .venv/bin/python -m benchmarks.bench_pixel_baselines --home /tmp/lookalike-pixels

Ingests the full catalogue into that home if it has none (70,000 images), then evaluates the
pixel baselines exactly as ``lookalike train``'s evaluation does (test queries, at most
``evaluation.max_queries``, against the train split). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import bench_settings

REPORTED = ("recall_at_1", "recall_at_5", "recall_at_10", "map_at_r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full")
    parser.add_argument("--home", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()

    from lookalike.catalogue.ingest import ingest_fashion_mnist
    from lookalike.catalogue.tables import catalogue_table
    from lookalike.learning.evaluation import (PIXEL_BASELINES, evaluate_embedders,
                                               load_eval_splits)
    from lookalike.spark import get_spark

    settings = bench_settings(args.profile, args.home, args.set)
    spark = get_spark(settings)
    ingest_fashion_mnist(spark, settings)
    version = catalogue_table(settings, "products").version(spark)
    started = time.perf_counter()
    train, _, test = load_eval_splits(spark, settings, version)
    # Every variant on every query (evaluation chooses on a sample: see BASELINE_CHOICE_QUERIES).
    metrics = evaluate_embedders(settings, train, test, None, None,
                                 baseline_choice_queries=None)["metrics"]
    out = {"benchmark": "pixel_baselines", "profile": args.profile,
           "catalogue": len(train), "seconds": round(time.perf_counter() - started, 1)}
    for protocol in ("a", "b"):
        prefix = f"baseline_{protocol}_"
        if f"{prefix}n_queries" not in metrics:
            continue
        out[protocol] = {
            "queries": int(metrics[f"{prefix}n_queries"]),
            "variants": {name: {m: round(metrics[f"{prefix}{name}_{m}"], 4)
                                for m in ("recall_at_1", "map_at_r")}
                         for name in PIXEL_BASELINES},
            "strongest": list(PIXEL_BASELINES)[int(metrics[f"{prefix}variant"])],
            "strongest_metrics": {m: round(metrics[f"{prefix}{m}"], 4) for m in REPORTED},
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

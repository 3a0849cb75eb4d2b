"""Training benchmark on full Fashion-MNIST: retrieval quality, throughput, tuning wall time.

Prints one JSON object:

* ``a_recall_at_1``, ``a_map_at_r`` (test queries vs train catalogue, all classes; target
  Recall@1 >= 0.92), ``b_recall_at_1`` (unseen categories, model trained without them; target
  >= baseline_b_recall_at_1 + 0.05), ``baseline_*`` (raw pixels, cosine);
* ``images_per_second`` with 1 and 2 Horovod processes (``--throughput-steps`` steps each);
* ``tuning_wall_seconds`` for ``--tuning-trials`` SparkTrials trials.

Example (about an hour on 2 CPU cores)::

    .venv/bin/python -m benchmarks.bench_training --profile full --home /tmp/lookalike-bench
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full")
    parser.add_argument("--home", help="LOOKALIKE_HOME for the benchmark (default: settings)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--throughput-steps", type=int, default=60)
    parser.add_argument("--tuning-trials", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["throughput", "tuning", "quality"])
    parser.add_argument("--use-tuned", action="store_true",
                        help="train with the best params of the benchmark's tuning run")
    args = parser.parse_args(argv)

    from benchmarks.common import bench_settings
    from lookalike.catalogue.ingest import ingest_fashion_mnist
    from lookalike.spark import get_spark

    settings = bench_settings(args.profile, args.home, args.set)
    spark = get_spark(settings)
    out: dict = {"profile": args.profile, "home": str(settings.home_path),
                 "cores": os.cpu_count(), "settings": {
                     "model": settings.model.__dict__, "training": settings.training.__dict__}}
    started = time.time()
    print("[bench] ingesting Fashion-MNIST", file=sys.stderr, flush=True)
    out["ingest"] = ingest_fashion_mnist(spark, settings).__dict__

    if "throughput" not in args.skip:
        from lookalike.learning.data import prepare_training_data
        from lookalike.learning.distributed import run_training

        quick = settings.replace(training={"epochs": 1, "steps_per_epoch": args.throughput_steps})
        spec = prepare_training_data(spark, quick)
        for processes in (1, 2):
            with tempfile.TemporaryDirectory() as ckpt:
                results = run_training(quick, spec, ckpt, processes=processes, spark=spark)
            seconds = max(r["seconds"] for r in results)
            images = sum(r["images"] for r in results)
            out[f"images_per_second_{processes}proc"] = images / seconds
            print(f"[bench] {processes} process(es): {images / seconds:.0f} images/s",
                  file=sys.stderr, flush=True)

    if "tuning" not in args.skip:
        from lookalike.learning.tuning import tune

        t0 = time.time()
        tuned = tune(settings, max_evals=args.tuning_trials, parallelism=2)
        out["tuning_wall_seconds"] = time.time() - t0
        out["tuning_trials"] = args.tuning_trials
        out["tuning_best"] = tuned

    if "quality" not in args.skip:
        from lookalike.learning.training import train_and_log

        t0 = time.time()
        result = train_and_log(settings.replace(evaluation={"generalisation": True}),
                               use_tuned=args.use_tuned)
        out["train_wall_seconds"] = time.time() - t0
        out.update({k: v for k, v in result.items()})
        if "a_recall_at_1" in result:
            out["target_a_recall_at_1_ge_0.92"] = result["a_recall_at_1"] >= 0.92
        if "b_recall_at_1" in result and "baseline_b_recall_at_1" in result:
            out["target_b_ge_baseline_plus_0.05"] = (
                result["b_recall_at_1"] >= result["baseline_b_recall_at_1"] + 0.05)
    out["total_wall_seconds"] = time.time() - started
    print(json.dumps(out, default=str, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: batch embedding throughput (Spark mapInPandas job into Delta), and the setup
(catalogue + model + index + registered pyfunc) that bench_serving reuses.

Run: .venv/bin/python -m benchmarks.bench_embedding [--home DIR] [--limit-per-split N]
     [--run-id RUN] [--package]

Without ``--run-id`` the model is the configured architecture (compact_cnn, 128-d) with
*untrained* weights, logged as a training run: throughput and latency do not depend on the
weight values, but retrieval quality does (not measured here). Prints one JSON line with
images/s of the full Spark job (model load included) and of the bare model on one process.
With ``--package`` it also builds the index, packages, registers and promotes, and prints
``home`` and ``model_uri`` for bench_serving. Target (issue 4): >= 2,000 images/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def log_untrained_model(settings) -> str:
    """Log the configured architecture with initial weights as a finished 'train' run."""
    import mlflow
    import tensorflow as tf

    from lookalike.learning.model import build_model, embedding_network, save_embedding_model
    from lookalike.tracking import KIND_TAG, MODEL_ARTIFACT, configure_mlflow

    tf.keras.utils.set_random_seed(0)
    configure_mlflow(settings)
    model = embedding_network(build_model(settings), settings)
    with mlflow.start_run(run_name="bench-untrained", tags={KIND_TAG: "train"}) as run, \
            tempfile.TemporaryDirectory() as tmp:
        directory = save_embedding_model(model, f"{tmp}/{MODEL_ARTIFACT}", {
            "distance": settings.model.distance, "backbone": settings.model.backbone,
            "categories": [], "training_run_id": run.info.run_id, "untrained": True})
        mlflow.log_artifacts(str(directory), MODEL_ARTIFACT)
        mlflow.log_metrics({"a_map_at_r": 0.0, "val_a_map_at_r": 0.0})
    return run.info.run_id


def prepare(home: str | None, limit_per_split: int | None, run_id: str | None,
            package: bool) -> dict:
    from lookalike.catalogue.ingest import ingest_fashion_mnist
    from lookalike.config import load_settings
    from lookalike.embeddings import embed_catalogue
    from lookalike.index.build import build_index
    from lookalike.learning.artifacts import cached_embedding_model, resolve_model
    from lookalike.spark import get_spark

    home = home or tempfile.mkdtemp(prefix="lookalike-bench-")
    settings = load_settings(overrides={"home": home})
    spark = get_spark(settings)
    started = time.perf_counter()
    ingest = ingest_fashion_mnist(spark, settings, limit_per_split=limit_per_split)
    ingest_s = time.perf_counter() - started
    run_id = run_id or log_untrained_model(settings)
    run_id, model_dir = resolve_model(settings, run_id)

    started = time.perf_counter()
    first = embed_catalogue(settings, run_id=run_id)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    rerun = embed_catalogue(settings, run_id=run_id)
    rerun_s = time.perf_counter() - started

    # The bare model on preprocessed input, one process (upper bound of the Spark job).
    model = cached_embedding_model(str(model_dir))
    x = np.random.default_rng(0).random((4096, model.image_size, model.image_size,
                                         model.channels), dtype=np.float32)
    model.embed(x[:512], batch_size=512)
    started = time.perf_counter()
    model.embed(x, batch_size=settings.embedding.batch_size)
    model_s = time.perf_counter() - started

    result = {
        "benchmark": "batch_embedding", "home": home, "model_version": run_id,
        "products": first["embedded"] + first["unchanged"],
        "ingest_s": round(ingest_s, 1), "embedded": first["embedded"],
        "embed_job_s": round(embed_s, 1), "images_per_s": round(first["embedded"] / embed_s),
        "rerun_s": round(rerun_s, 1), "rerun_embedded": rerun["embedded"],
        "bare_model_images_per_s": round(len(x) / model_s),
        "partitions": settings.embedding.partitions, "batch_size": settings.embedding.batch_size,
        "target_images_per_s": 2000, "target_met": first["embedded"] / embed_s >= 2000,
        "ingested": ingest.inserted,
    }
    if package:
        from lookalike.registry import promote
        from lookalike.serving.package import package_and_register
        from lookalike.serving.validation import validate_version

        started = time.perf_counter()
        index = build_index(settings, run_id=run_id)
        result["index_build_s"] = round(time.perf_counter() - started, 1)
        result["index_count"] = index["count"]
        started = time.perf_counter()
        registered = package_and_register(settings, run_id=run_id)
        # Promotion needs a passed validation (registry.require_validation); in-process here.
        validate_version(settings, registered["version"], env_manager="local")
        promoted = promote(settings, version=registered["version"])
        if not promoted["promoted"]:
            raise RuntimeError(f"the prepared model was not promoted: {promoted['reason']}")
        result["package_s"] = round(time.perf_counter() - started, 1)
        result["model_uri"] = f"models:/{settings.registry.model_name}@champion"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="LOOKALIKE_HOME (default: a fresh temp dir)")
    parser.add_argument("--limit-per-split", type=int, help="default: all 70,000 images")
    parser.add_argument("--run-id", help="a training run to use (default: untrained model)")
    parser.add_argument("--package", action="store_true",
                        help="also build the index, package, register and promote")
    args = parser.parse_args()
    print(json.dumps(prepare(args.home, args.limit_per_split, args.run_id, args.package)))


if __name__ == "__main__":
    main()

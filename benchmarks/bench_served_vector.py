"""Which vector to serve: one trained network, scored with every ``model.embedding_from``.

Trains the protocol (a) model (every category) and the protocol (b) model (without
``evaluation.unseen_categories``) once each, in-process, with the configured recipe (no tuning),
then scores protocols (a) and (b) on the test split for each served vector the product offers
(:func:`lookalike.learning.model.embedding_network`): the backbone's pooled ``features`` and the
MetricEmbedding ``head``. Same weights, same queries: only the served vector differs.
Prints one JSON object.

Example (25 minutes on 2 shared cores)::

    .venv/bin/python -m benchmarks.bench_served_vector --profile full \\
        --home /tmp/lookalike-vectors --set training.epochs=4 --set training.steps_per_epoch=300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

REPORTED = ("recall_at_1", "recall_at_5", "recall_at_10", "map_at_r")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full")
    parser.add_argument("--home", help="LOOKALIKE_HOME for the benchmark (default: settings)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="val: choose on validation data (default); test: report only")
    # One garment and one shoe, each with a relative left in training (Shirt, Ankle boot), as
    # the unseen T-shirt/top, Coat and Sandal have theirs.
    parser.add_argument("--validation-categories", default="Pullover,Sneaker",
                        help="--split val, protocol (b): seen categories held out of training")
    args = parser.parse_args(argv)

    from benchmarks.common import bench_settings
    from lookalike.catalogue.ingest import ingest_fashion_mnist
    from lookalike.learning.data import prepare_training_data
    from lookalike.learning.distributed import train_embedding
    from lookalike.learning.evaluation import evaluate_embedders, load_eval_splits
    from lookalike.learning.model import EMBEDDING_FROM as SERVED
    from lookalike.learning.model import embedding_network
    from lookalike.spark import get_spark

    settings = bench_settings(args.profile, args.home, args.set)
    spark = get_spark(settings)
    started = time.time()
    print("[bench] ingesting Fashion-MNIST", file=sys.stderr, flush=True)
    version = ingest_fashion_mnist(spark, settings).table_version
    train, val, test = load_eval_splits(spark, settings, version)
    unseen = set(settings.evaluation.unseen_categories)
    queries, scoring = test, settings
    if args.split == "val":
        asked = [c for c in args.validation_categories.split(",") if c]
        if not asked or set(asked) & unseen or not set(asked) <= set(train.labels):
            raise SystemExit(f"bench_served_vector: --validation-categories {asked} must be "
                             f"seen categories (not {sorted(unseen)})")
        # (b) asks the held-out seen categories' validation queries; unseen ones stay out of
        # training too, so (b)'s model knows what test (b)'s model knows, minus these.
        queries, scoring = val, settings.replace(evaluation={"unseen_categories": asked})
        unseen |= set(asked)
    seen = sorted(c for c in set(train.labels) if c not in unseen)
    out: dict = {"profile": args.profile, "overrides": args.set, "cores": os.cpu_count(),
                 "split": args.split, "held_out_of_b_training": sorted(unseen),
                 "b_asks": list(scoring.evaluation.unseen_categories), "metrics": {}}
    for protocol, categories in (("a", []), ("b", seen)):
        trained = settings.replace(training={"train_categories": categories})
        spec = prepare_training_data(spark, trained, version)
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            model = train_embedding(dataclasses.asdict(trained), spec.to_dict(), tmp,
                                    keep_model=True)["model"]
        out[f"{protocol}_train_seconds"] = time.time() - t0
        for served in SERVED:
            network = embedding_network(model, trained.replace(model={"embedding_from": served}))

            def embed(x, network=network):
                return network.predict(x, batch_size=settings.embedding.batch_size, verbose=0)
            scored = evaluate_embedders(scoring, train, queries,
                                        embed if protocol == "a" else None,
                                        embed if protocol == "b" else None,
                                        baseline=(protocol, served) == ("a", SERVED[0]),
                                        distance="cosine")
            for name, value in scored["metrics"].items():
                if name.endswith(REPORTED):
                    key = name if name.startswith("baseline_") else f"{served}_{name}"
                    out["metrics"][key] = round(float(value), 4)
            print(f"[bench] ({protocol}) {served}: Recall@1 "
                  f"{scored['metrics'].get(f'{protocol}_recall_at_1', float('nan')):.4f}",
                  file=sys.stderr, flush=True)
    out["total_wall_seconds"] = time.time() - started
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

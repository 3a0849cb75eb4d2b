"""Benchmark: ANN index build time, queries/s and recall@10 against exact search.

Run: .venv/bin/python -m benchmarks.bench_index [--n 70000] [--dim 128] [--data clustered]
     [--m 32] [--ef-construction 200] [--ef-search 128] [--queries 1000] [--embeddings FILE]

Vectors are synthetic (``clustered``: a Gaussian mixture, like real embeddings; ``uniform``:
i.i.d. Gaussian, the hard case) unless ``--embeddings`` gives a .npy of real vectors. Queries
are held-out vectors of the same distribution. Prints one JSON line. Target (issue 4):
recall@10 >= 0.99.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from lookalike.catalogue.tables import table_path
from lookalike.index import make_index


def synthetic(n: int, dim: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.standard_normal((n, dim), dtype=np.float32)
    centres = rng.standard_normal((max(10, n // 1000), dim), dtype=np.float32) * 3.0
    labels = rng.integers(0, len(centres), n)
    return centres[labels] + rng.standard_normal((n, dim), dtype=np.float32)


def _delta_embeddings(home: str, run_id: str) -> np.ndarray:
    from lookalike.config import load_settings
    from lookalike.spark import get_spark

    settings = load_settings(overrides={"home": home})
    path = table_path(settings, "embeddings")
    rows = (get_spark(settings).read.format("delta").load(path)
            .where(f"model_version = '{run_id}'").select("vector").toPandas())
    return np.stack([np.asarray(v, dtype=np.float32) for v in rows["vector"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=70_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    parser.add_argument("--embeddings", help=".npy of real vectors (overrides --n/--dim/--data)")
    parser.add_argument("--home", help="use the Delta embeddings of --run-id in this "
                        "LOOKALIKE_HOME (e.g. prepared by bench_embedding)")
    parser.add_argument("--run-id", help="model version whose embeddings to use (with --home)")
    parser.add_argument("--distance", choices=["cosine", "l2"], default="cosine")
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.home:
        data = _delta_embeddings(args.home, args.run_id)
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(data))
        queries, base = data[order[:args.queries]], data[order[args.queries:]]
        source = f"delta-embeddings:{args.run_id}"
    elif args.embeddings:
        data = np.load(args.embeddings).astype(np.float32)
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(data))
        queries, base = data[order[:args.queries]], data[order[args.queries:]]
        source = f"embeddings:{args.embeddings}"
    else:
        base = synthetic(args.n, args.dim, args.data, args.seed)
        rng = np.random.default_rng(args.seed + 1)
        if args.data == "clustered":  # near catalogue items, like a photo of a product
            queries = base[rng.integers(0, len(base), args.queries)] + \
                rng.standard_normal((args.queries, args.dim), dtype=np.float32) * 0.5
        else:
            queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        source = f"synthetic-{args.data}"
    n, dim = base.shape
    ids = [str(i) for i in range(n)]
    cats = [str(i % 10) for i in range(n)]

    hnsw = make_index("hnsw", dim, args.distance, m=args.m, ef_construction=args.ef_construction,
                      ef_search=args.ef_search)
    started = time.perf_counter()
    for start in range(0, n, 100_000):
        hnsw.add(ids[start:start + 100_000], base[start:start + 100_000],
                 cats[start:start + 100_000])
    build_s = time.perf_counter() - started

    exact = make_index("exact", dim, args.distance)
    exact.add(ids, base, cats)
    started = time.perf_counter()
    truth = exact.search(queries, args.k)
    exact_s = time.perf_counter() - started

    started = time.perf_counter()
    batch = hnsw.search(queries, args.k)
    batch_s = time.perf_counter() - started
    started = time.perf_counter()
    single = [hnsw.search(q, args.k)[0] for q in queries]
    single_s = time.perf_counter() - started
    filtered_started = time.perf_counter()
    for q in queries[:200]:
        hnsw.search(q, args.k, category="3")
    filtered_s = time.perf_counter() - filtered_started

    recall = np.mean([len({i for i, _ in a} & {i for i, _ in b}) / args.k
                      for a, b in zip(batch, truth)])
    assert all([i for i, _ in a] == [i for i, _ in b] for a, b in zip(batch, single))
    print(json.dumps({
        "benchmark": "ann_index", "source": source, "n": n, "dim": dim,
        "distance": args.distance, "m": args.m, "ef_construction": args.ef_construction,
        "ef_search": args.ef_search, "k": args.k, "queries": len(queries),
        "build_s": round(build_s, 1), "recall_at_k": round(float(recall), 4),
        "batch_qps": round(len(queries) / batch_s), "single_query_qps": round(len(queries) / single_s),
        "single_query_ms": round(1000 * single_s / len(queries), 3),
        "filtered_single_query_ms": round(1000 * filtered_s / min(200, len(queries)), 3),
        "exact_batch_qps": round(len(queries) / exact_s),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "target_recall": 0.99, "target_met": bool(recall >= 0.99),
    }))


if __name__ == "__main__":
    main()

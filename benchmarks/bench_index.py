"""ANN index benchmark: recall@k against exact search, latency, throughput, build, memory.

The index is built with the settings' defaults (``index.params.hnsw`` of conf/base.yaml) unless
``--m`` / ``--ef-construction`` say otherwise, then searched with every ``--ef-search`` value
(a search-time parameter: one build serves the whole sweep). Data: clustered synthetic vectors
(queries near catalogue items, like a photo of a product) or the Delta embeddings of a model.
Categories: ``rare`` (1 % of items), ``mid`` (3 %), ``common`` (20 %), the rest spread over 10
others; category-filtered recall is measured for these three.

Run (one JSON object on stdout):

    .venv/bin/python -m benchmarks.bench_index --n 70000
    .venv/bin/python -m benchmarks.bench_index --n 1000000 --queries 500
    .venv/bin/python -m benchmarks.bench_index --home DIR --run-id RUN   # real embeddings
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from lookalike.index import make_index
from lookalike.vectors import exact_knn, prepare

RARE, MID, COMMON = "rare", "mid", "common"
FILTERS = (RARE, MID, COMMON)


def synthetic(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered vectors, as in the earlier measurements: n / 1000 centres (scale 3),
    unit-variance noise around them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(10, n // 1000), dim), dtype=np.float32) * 3.0
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 200_000):  # in chunks: bounded temporary memory
        stop = min(n, start + 200_000)
        out[start:stop] = centres[rng.integers(0, len(centres), stop - start)] + \
            rng.standard_normal((stop - start, dim), dtype=np.float32)
    return out


def categories(n: int, seed: int) -> np.ndarray:
    draw = np.random.default_rng(seed + 7).random(n)
    cats = np.array([f"other-{i % 10}" for i in range(n)], dtype=object)
    cats[draw < 0.01] = RARE
    cats[(draw >= 0.01) & (draw < 0.04)] = MID
    cats[(draw >= 0.04) & (draw < 0.24)] = COMMON
    return cats


def delta_embeddings(home: str, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    from lookalike.catalogue.tables import catalogue_table
    from lookalike.config import load_settings
    from lookalike.spark import get_spark

    settings = load_settings(overrides={"home": home})
    rows = (catalogue_table(settings, "embeddings").read(get_spark(settings))
            .where(f"model_version = '{run_id}'").select("vector", "category").toPandas())
    return np.stack([np.asarray(v, dtype=np.float32) for v in rows["vector"]]), \
        rows["category"].to_numpy(object)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recall(found: list[list[tuple[str, float]]], truth: np.ndarray, ids: list[str], k: int
           ) -> float:
    hits = [len({i for i, _ in row} & {ids[j] for j in want[:k]}) / min(k, len(want))
            for row, want in zip(found, truth)]
    return float(np.mean(hits))


def latency(index, queries: np.ndarray, k: int, category: str | None = None) -> dict:
    """Single-query latency (one search call per query, as the REST server makes)."""
    times = []
    for q in queries:
        started = time.perf_counter()
        index.search(q, k, category=category)
        times.append(time.perf_counter() - started)
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def ground_truth(queries, base, cats, k) -> dict:
    """Exact neighbours (base rows): unfiltered, and within the rare and common categories."""
    q, b = prepare(queries, "cosine"), prepare(base, "cosine")
    truth = {None: exact_knn(q, b, k, "cosine")[1]}
    for name in FILTERS:
        rows = np.flatnonzero(cats == name)
        truth[name] = rows[exact_knn(q, b[rows], k, "cosine")[1]]
    return truth


def measure(index, queries, truth, ids, k, ef: int, single: int) -> dict:
    index.set_search_params(ef_search=ef)
    started = time.perf_counter()
    found = index.search(queries, k)
    batch_s = time.perf_counter() - started
    out = {"ef_search": ef, "recall_at_k": round(recall(found, truth[None], ids, k), 4),
           "batch_qps": round(len(queries) / batch_s), **latency(index, queries[:single], k)}
    for name in FILTERS:
        found = index.search(queries, k, category=name)
        out[f"{name}_recall_at_k"] = round(recall(found, truth[name], ids, k), 4)
        out[f"{name}_latency"] = latency(index, queries[:single], k, category=name)
    return out


def main(argv=None) -> None:
    from lookalike.config import load_settings

    defaults = load_settings().index.params_of("hnsw")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=70_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--home", help="use the Delta embeddings of --run-id in this home")
    parser.add_argument("--run-id")
    parser.add_argument("--m", type=int, default=defaults.m)
    parser.add_argument("--ef-construction", type=int, default=defaults.ef_construction)
    parser.add_argument("--ef-search", default=f"32,64,{defaults.ef_search},256")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=300, help="queries timed one by one")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed + 1)
    if args.home:
        data, data_cats = delta_embeddings(args.home, args.run_id)
        order = rng.permutation(len(data))
        queries, base = data[order[:args.queries]], data[order[args.queries:]]
        cats = data_cats[order[args.queries:]]
        source = f"delta-embeddings:{args.run_id}"
    else:
        # Queries near catalogue items, like a shopper's photo of a product.
        base = synthetic(args.n, args.dim, args.seed)
        queries = base[rng.integers(0, len(base), args.queries)] + \
            rng.standard_normal((args.queries, args.dim), dtype=np.float32) * 0.5
        cats = categories(len(base), args.seed)
        source = "synthetic-clustered"
    ids = [str(i) for i in range(len(base))]
    before = rss_mb()
    index = make_index("hnsw", base.shape[1], "cosine", m=args.m,
                       ef_construction=args.ef_construction)
    started = time.perf_counter()
    for start in range(0, len(base), 100_000):
        index.add(ids[start:start + 100_000], base[start:start + 100_000],
                  list(cats[start:start + 100_000]))
    build_s = time.perf_counter() - started
    build_rss = rss_mb() - before
    truth = ground_truth(queries, base, cats, args.k)
    sweep = [measure(index, queries, truth, ids, args.k, int(ef), args.single)
             for ef in args.ef_search.split(",")]
    print(json.dumps({
        "benchmark": "ann_index", "source": source, "n": len(base), "dim": base.shape[1],
        "m": args.m, "ef_construction": args.ef_construction, "k": args.k,
        "queries": len(queries), "filter_brute_force_max": index.params.filter_brute_force_max,
        "category_share": {name: round(float(np.mean(cats == name)), 4)
                           for name in FILTERS},
        "build_s": round(build_s, 1), "build_peak_rss_increase_mb": round(build_rss),
        "peak_rss_mb": round(rss_mb()), "sweep": sweep,
        "target": "recall@10 >= 0.95 at >= 2000 q/s (batched, 2 cores)",
    }))


if __name__ == "__main__":
    main()

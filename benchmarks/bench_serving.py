"""Benchmark: REST latency (p50/p99) and throughput of one-image queries against a real
`mlflow models serve` of the lookalike pyfunc, on loopback only, at concurrency 1, 4 and 8.

Run: .venv/bin/python -m benchmarks.bench_serving --home DIR [--model-uri URI]
     (a home prepared by `benchmarks.bench_embedding --package`), or
     .venv/bin/python -m benchmarks.bench_serving --prepare N   (prepares N images per split)

Each level sends a bounded number of requests (``--requests``, also capped by ``--seconds``)
from that many threads, each thread on its own keep-alive connection; every request is one
base64 PNG catalogue image with k=10. Prints one JSON line. Targets (issue 11): p50 <= 10 ms at
concurrency 1; >= 250 req/s with p99 <= 60 ms at concurrency 8. Also reports each worker's RSS.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import threading
import time
from urllib.parse import urlparse

import numpy as np


def _images(settings, count: int) -> list[str]:
    from lookalike.catalogue.tables import read_products
    from lookalike.spark import get_spark

    frame, _ = read_products(get_spark(settings), settings)
    rows = frame.select("image").limit(count).toPandas()
    return [base64.b64encode(bytes(b)).decode("ascii") for b in rows["image"]]


def _worker(url: str, bodies: list[bytes], count: int, deadline: float, out: list,
            errors: list) -> None:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    for i in range(count):
        if time.perf_counter() > deadline:
            break
        body = bodies[i % len(bodies)]
        started = time.perf_counter()
        conn.request("POST", "/invocations", body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        out.append(time.perf_counter() - started)
        if response.status != 200:
            errors.append((response.status, payload[:200]))
    conn.close()


def run_level(url: str, bodies: list[bytes], concurrency: int, requests: int,
              seconds: float) -> dict:
    latencies: list[float] = []
    errors: list = []
    per_thread = max(1, requests // concurrency)
    deadline = time.perf_counter() + seconds
    threads = [threading.Thread(target=_worker,
                                args=(url, bodies[i::concurrency] or bodies, per_thread,
                                      deadline, latencies, errors))
               for i in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": len(errors),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "req_per_s": round(len(latencies) / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="LOOKALIKE_HOME holding the registered model")
    parser.add_argument("--model-uri", help="default: models:/<registry.model_name>@champion")
    parser.add_argument("--prepare", type=int, metavar="N",
                        help="first prepare a fresh home with N images per split")
    parser.add_argument("--requests", type=int, default=1000, help="per concurrency level")
    parser.add_argument("--seconds", type=float, default=60.0, help="cap per level")
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="setting override, e.g. serving.workers=1")
    parser.add_argument("--include-images", action="store_true",
                        help="ask for thumbnails in every answer")
    parser.add_argument("--floor", action="store_true",
                        help="serve a trivial pyfunc with the champion's signature instead: "
                             "MLflow's own cost per request, for comparison")
    args = parser.parse_args()

    from lookalike.config import load_settings
    from lookalike.serving.server import post_json, start_server, stop_server

    prepared = None
    if args.prepare:
        from benchmarks.bench_embedding import prepare

        prepared = prepare(args.home, args.prepare, None, package=True)
        args.home = prepared["home"]
    if not args.home:
        parser.error("give --home (prepared by bench_embedding --package) or --prepare N")
    from lookalike.cli import _overrides
    from lookalike.config.loader import deep_merge

    settings = load_settings(overrides=deep_merge({"home": args.home}, _overrides(args.set)))
    images = _images(settings, 256)
    params = {"k": 10, **({"include_images": True} if args.include_images else {})}
    bodies = [json.dumps({"dataframe_records": [{"image": image}], "params": params}).encode()
              for image in images]
    model_uri = _floor_model(settings) if args.floor else args.model_uri
    started = time.perf_counter()
    process, url = start_server(settings, model_uri)
    startup_s = time.perf_counter() - started
    try:
        status, body = post_json(f"{url}/invocations", json.loads(bodies[0]))
        assert status == 200 and len(body["predictions"]) == 10, (status, body)
        run_level(url, bodies, 1, 50, 30)                     # warm-up
        levels = [run_level(url, bodies, int(c), args.requests, args.seconds)
                  for c in args.levels.split(",")]
        worker_memory = _worker_memory_mb(process.pid)
    finally:
        stop_server(process)
    by_level = {level["concurrency"]: level for level in levels}
    targets = {"c1_p50_ms_max": 10, "c8_req_per_s_min": 250, "c8_p99_ms_max": 60}
    met = (1 in by_level and by_level[1]["p50_ms"] <= 10 and 8 in by_level
           and by_level[8]["req_per_s"] >= 250 and by_level[8]["p99_ms"] <= 60)
    print(json.dumps({
        "benchmark": "rest_serving_floor" if args.floor else "rest_serving",
        "model_uri": model_uri or "champion",
        "workers": settings.serving_workers, "threads_per_worker": settings.serving_threads,
        "include_images": args.include_images, "server_startup_s": round(startup_s, 1),
        "catalogue_items": prepared["index_count"] if prepared else None,
        "worker_memory_mb": worker_memory, "levels": levels, "targets": targets, "target_met": met,
    }))


class _Trivial:
    """A pyfunc answering ten fixed neighbours: what MLflow's server costs without our work."""

    @staticmethod
    def make():
        import mlflow.pyfunc

        class Trivial(mlflow.pyfunc.PythonModel):
            def load_context(self, context):
                from lookalike.serving.worker import enable_nodelay

                enable_nodelay()  # the same transport fix as the lookalike model

            def predict(self, context, model_input, params=None):
                return [{"query": 0, "rank": r, "product_id": f"p{r}", "category": "c",
                         "title": None, "distance": 0.1} for r in range(1, 11)]

        return Trivial()


def _floor_model(settings) -> str:
    """Log and register the trivial pyfunc with the champion's signature; its model URI."""
    import mlflow
    from mlflow.models import Model

    from lookalike.serving.server import default_model_uri
    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    signature = Model.load(default_model_uri(settings)).signature
    with mlflow.start_run(run_name="serving-floor"):
        info = mlflow.pyfunc.log_model(name="floor", python_model=_Trivial.make(),
                                       signature=signature, code_paths=[_lookalike_dir()])
    return info.model_uri


def _lookalike_dir() -> str:
    import lookalike

    from pathlib import Path
    return str(Path(lookalike.__file__).resolve().parent)


def _worker_memory_mb(pid: int) -> list[dict]:
    """Memory of each uvicorn worker after the load: RSS, PSS (shared pages split between the
    processes sharing them: TensorFlow's libraries, the memory-mapped thumbnails) and USS
    (pages of that worker alone), in MB."""
    import psutil

    children = psutil.Process(pid).children(recursive=True)
    workers = [c for c in children if "multiprocessing" in " ".join(c.cmdline())] or children
    out = []
    for worker in workers:
        info = worker.memory_full_info()
        out.append({"rss": round(info.rss / 2**20), "pss": round(info.pss / 2**20),
                    "uss": round(info.uss / 2**20)})
    return out


if __name__ == "__main__":
    main()

"""Benchmark: REST latency (p50/p99) and throughput of one-image queries against a real
`mlflow models serve` of the lookalike pyfunc, on loopback only, at concurrency 1, 4 and 8.

Run: .venv/bin/python -m benchmarks.bench_serving --home DIR [--model-uri URI]
     (a home prepared by `benchmarks.bench_embedding --package`), or
     .venv/bin/python -m benchmarks.bench_serving --prepare N   (prepares N images per split)

Each level sends a bounded number of requests (``--requests``, also capped by ``--seconds``)
from that many threads, each thread on its own keep-alive connection; every request is one
base64 PNG catalogue image with k=10. Prints one JSON line. Targets (issue 4): p50 <= 15 ms and
p99 <= 50 ms at concurrency 1.
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
    settings = load_settings(overrides={"home": args.home})
    images = _images(settings, 256)
    bodies = [json.dumps({"dataframe_records": [{"image": image}], "params": {"k": 10}}).encode()
              for image in images]
    started = time.perf_counter()
    process, url = start_server(settings, args.model_uri)
    startup_s = time.perf_counter() - started
    try:
        status, body = post_json(f"{url}/invocations", json.loads(bodies[0]))
        assert status == 200 and len(body["predictions"]) == 10, (status, body)
        run_level(url, bodies, 1, 50, 30)                     # warm-up
        levels = [run_level(url, bodies, int(c), args.requests, args.seconds)
                  for c in args.levels.split(",")]
    finally:
        stop_server(process)
    first = levels[0]
    print(json.dumps({
        "benchmark": "rest_serving", "model_uri": args.model_uri or "champion",
        "workers": settings.serving.workers, "server_startup_s": round(startup_s, 1),
        "catalogue_items": prepared["index_count"] if prepared else None,
        "levels": levels, "target_p50_ms": 15, "target_p99_ms": 50,
        "target_met": first["concurrency"] == 1 and first["p50_ms"] <= 15
        and first["p99_ms"] <= 50,
    }))


if __name__ == "__main__":
    main()

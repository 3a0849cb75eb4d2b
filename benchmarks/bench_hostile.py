"""Benchmark: every hostile input of issue 19 replayed against a real `mlflow models serve` of
the lookalike pyfunc (one worker, loopback only); time and the worker's peak memory for each.

Run: .venv/bin/python -m benchmarks.bench_hostile --prepare 100
     (a fresh home: 100 Fashion-MNIST images per split, an untrained model, packaged), or
     .venv/bin/python -m benchmarks.bench_hostile --home DIR   (a home with a champion)

Each case is sent on its own connection; the worker's RSS is sampled every 2 ms from just
before the request until its answer, and reported above the worker's RSS when idle (after
warm-up). Then 300 sockets each send half a request head and wait (re-opened whenever the
server closes them, so 300 are held throughout) while a real client sends one image query a
second: its latencies are reported. Targets (issue 19): each case < 1 s and < 100 MB above
idle; the real client answered in < 1 s while 300 half-open connections are held.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import socket
import threading
import time
from urllib.parse import urlparse

import numpy as np
from PIL import Image, PngImagePlugin

MB = 2**20


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo(width: int, height: int) -> Image.Image:
    small = np.random.default_rng(0).integers(0, 256, (height // 64, width // 64, 3), np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def _text_bomb() -> bytes:
    """A small PNG whose zTXt chunks decompress to 64 MB of text (Pillow's default cap)."""
    info = PngImagePlugin.PngInfo()
    for i in range(64):
        info.add_text(f"k{i}", "x" * 1_000_000, zip=True)
    return _encoded(Image.new("RGB", (8, 8)), "PNG", pnginfo=info)


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: phone photos
    return _encoded(_photo(6000, 4000), "JPEG", quality=85, exif=exif)


def _mpo() -> bytes:
    photo = _photo(4000, 3000)
    return _encoded(photo, "MPO", save_all=True, append_images=[photo.rotate(180)], quality=85)


def hostile_images() -> dict[str, bytes]:
    """name -> image bytes: what issue 19 found, and the largest images the limits accept."""
    colour_key = _encoded(Image.new("RGB", (5000, 5000)), "PNG", transparency=(0, 0, 0))
    return {
        "16-bit 25 MP PNG (48 KB; accepted, at the limit)": _encoded(Image.new("I;16", (5000, 5000)), "PNG"),
        "RGBA 25 MP PNG": _encoded(Image.new("RGBA", (5000, 5000)), "PNG"),
        "palette 25 MP PNG, transparent": _encoded(Image.new("P", (5000, 5000)), "PNG",
                                                   transparency=0),
        "RGB 25 MP PNG, tRNS colour key": colour_key,
        "25 MP lossless WebP": _encoded(Image.new("RGB", (5000, 5000)), "WEBP", lossless=True),
        "24 MP progressive JPEG 4:4:4": _encoded(_photo(6000, 4000), "JPEG", quality=85,
                                                 progressive=True, subsampling=0),
        "24 MP baseline JPEG, EXIF-rotated (accepted)": _rotated_jpeg(),
        "12 MP multi-picture JPEG (MPO, accepted)": _mpo(),
        "12 MP RGB PNG, at the decode limit (accepted)":
            _encoded(Image.new("RGB", (3500, 3500), (200, 30, 30)), "PNG"),
        "decompression bomb 900 MP PNG": _encoded(Image.new("1", (30000, 30000)), "PNG"),
        "PNG with 64 MB of zTXt text": _text_bomb(),
        "truncated JPEG": _encoded(_photo(2000, 1500), "JPEG")[:5000],
        "not an image": b"<?php system($_GET['c']); ?>" * 100,
    }


def hostile_requests(images: dict[str, bytes], catalogue_image: str,
                     product_id: str) -> dict[str, bytes]:
    """name -> request body."""
    def body(records, **params):
        return json.dumps({"dataframe_records": records, "params": params}).encode()

    out = {name: body([{"image": base64.b64encode(data).decode()}], k=10)
           for name, data in images.items()}
    at_limit = base64.b64encode(images["12 MP RGB PNG, at the decode limit (accepted)"]).decode()
    out.update({
        "64 images at the decode limit": body([{"image": at_limit}] * 64, k=10),
        "4 images at the decode limit (accepted)": body([{"image": at_limit}] * 4, k=10),
        "64 rows x k=100 x include_images": body([{"product_id": product_id}] * 64, k=100,
                                                 include_images=True),
        "64 rows x k=100 (accepted)": body([{"product_id": product_id}] * 64, k=100),
        "bad base64": body([{"image": "%%%not base64%%%"}]),
        "20 MB body": body([{"image": "A" * 20_000_000}]),
        "one catalogue image (accepted)": body([{"image": catalogue_image}], k=10),
    })
    return out


class _Sampler:
    """Peak RSS of one process, sampled every 2 ms while running."""

    def __init__(self, process):
        self.process, self.peak, self._stop = process, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _post(url: str, body: bytes, timeout: float = 120) -> tuple[int, bytes]:
    parts = urlparse(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        try:
            connection.request("POST", "/invocations", body=body,
                               headers={"Content-Type": "application/json"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (413) before the whole body was sent
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# Sent by three clients at once (issue 19: three pushed a worker to 2.2 GB and 90 s of work).
AT_ONCE = "16-bit 25 MP PNG (48 KB; accepted, at the limit)"


def _post_at_once(url: str, body: bytes, clients: int) -> tuple[int, bytes]:
    """``clients`` identical requests at once; the worst status and the last answer."""
    answers: list[tuple[int, bytes]] = []
    threads = [threading.Thread(target=lambda: answers.append(_post(url, body)))
               for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return max(status for status, _ in answers), answers[-1][1]


def replay(url: str, worker, requests: dict[str, bytes]) -> tuple[int, list[dict]]:
    for _ in range(5):  # warm-up: the worker's allocator and caches settle
        _post(url, requests["one catalogue image (accepted)"])
    time.sleep(0.5)
    idle = worker.memory_info().rss
    rows = []
    cases = [(name, body, 1) for name, body in requests.items()]
    cases.append((f"3 clients at once: {AT_ONCE}", requests[AT_ONCE], 3))
    for name, body, clients in cases:
        with _Sampler(worker) as sampler:
            started = time.perf_counter()
            status, answer = (_post(url, body) if clients == 1
                              else _post_at_once(url, body, clients))
            seconds = time.perf_counter() - started
        message = ""
        if status != 200:
            try:
                message = json.loads(answer).get("message", "")
            except ValueError:
                message = answer.decode("utf-8", "replace")
        rows.append({"case": name, "request_bytes": len(body), "status": status,
                     "seconds": round(seconds, 3),
                     "peak_above_idle_mb": round(max(0, sampler.peak - idle) / MB, 1),
                     "answer_bytes": len(answer), "message": message[-160:]})
    return idle, rows


def half_open_siege(url: str, body: bytes, held: int = 300, seconds: float = 12.0) -> dict:
    """``held`` half-open connections kept open (re-opened when closed) while a real client
    queries once every 0.5 s."""
    parts = urlparse(url)
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\n"
    stop = threading.Event()
    reopened = [0]

    def hold(count: int):
        sockets = []
        for _ in range(count):
            s = socket.create_connection((parts.hostname, parts.port))
            s.sendall(head)
            sockets.append(s)
        while not stop.is_set():
            for i, s in enumerate(sockets):
                s.setblocking(False)
                try:
                    gone = s.recv(1) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    s.close()
                    s = socket.create_connection((parts.hostname, parts.port))
                    s.sendall(head)
                    sockets[i] = s
                    reopened[0] += 1
            time.sleep(0.05)
        for s in sockets:
            s.close()

    holder = threading.Thread(target=hold, args=(held,), daemon=True)
    holder.start()
    time.sleep(1.0)  # all held
    latencies, statuses = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status, _ = _post(url, body, timeout=30)
        latencies.append(time.perf_counter() - started)
        statuses.append(status)
        time.sleep(0.5)
    stop.set()
    holder.join()
    return {"held_half_open": held, "seconds": seconds, "reopened_by_attacker": reopened[0],
            "client_requests": len(latencies),
            "client_statuses": sorted(set(statuses)),
            "client_max_s": round(max(latencies), 3),
            "client_p50_s": round(float(np.median(latencies)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="LOOKALIKE_HOME holding a registered champion")
    parser.add_argument("--prepare", type=int, metavar="N",
                        help="first prepare a fresh home with N images per split")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()

    import psutil

    from benchmarks.common import bench_settings
    from lookalike.serving.server import start_server, stop_server

    if args.prepare:
        from benchmarks.bench_embedding import prepare

        args.home = prepare(args.home, args.prepare, None, package=True)["home"]
    if not args.home:
        parser.error("give --home or --prepare N")
    settings = bench_settings(None, args.home, ["serving.workers=1", *args.set])
    from benchmarks.bench_serving import _images

    catalogue_image = _images(settings, 1)[0]
    process, url = start_server(settings)
    try:
        status, answer = _post(url, json.dumps({"dataframe_records": [
            {"image": catalogue_image}], "params": {"k": 1}}).encode())
        product_id = json.loads(answer)["predictions"][0]["product_id"]
        requests = hostile_requests(hostile_images(), catalogue_image, product_id)
        children = psutil.Process(process.pid).children(recursive=True)
        worker = max(children, key=lambda p: p.memory_info().rss)  # the model's process
        idle, rows = replay(url, worker, requests)
        siege = half_open_siege(url, requests["one catalogue image (accepted)"])
        still = _post(url, requests["one catalogue image (accepted)"])[0]
    finally:
        stop_server(process)
    met = (all(r["seconds"] < 1 and r["peak_above_idle_mb"] < 100 for r in rows)
           and siege["client_max_s"] < 1 and siege["client_statuses"] == [200]
           and still == 200)
    print(json.dumps({"benchmark": "hostile_inputs", "worker_idle_rss_mb": round(idle / MB),
                      "cases": rows, "half_open": siege,
                      "targets": {"case_seconds_max": 1, "case_peak_above_idle_mb_max": 100,
                                  "client_under_siege_seconds_max": 1},
                      "target_met": met}))


if __name__ == "__main__":
    main()

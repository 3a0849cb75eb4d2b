"""The REST server: ``mlflow models serve`` of a registered ``lookalike`` model, on loopback by
default; :func:`start_server` (background, waits for ``/ping``) and :func:`serve` (blocking,
``lookalike serve``). The contract is in :mod:`lookalike.serving.recommender`."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from lookalike.config import Settings
from lookalike.processes import free_port, stop_process, wait_http
from lookalike.registry import CHAMPION
from lookalike.serving.worker import SERVER_LIMITS_ENV

log = logging.getLogger(__name__)


def default_model_uri(settings: Settings) -> str:
    return f"models:/{settings.registry.model_name}@{CHAMPION}"


def server_command(settings: Settings, model_uri: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
            "--env-manager", "local", "-h", settings.serving.host, "-p", str(port),
            "-w", str(settings.serving_workers)]


def server_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH even when not activated.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    env["MLFLOW_REGISTRY_URI"] = settings.registry_uri
    env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(settings.serving.timeout_seconds)
    env["LOOKALIKE_HOME"] = str(settings.home_path)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Workers share the cores: TensorFlow and faiss (OpenMP) each get their share, no more;
    # one request is a handful of images, so more threads only add hand-over costs.
    threads = str(settings.serving_threads)
    env["TF_NUM_INTRAOP_THREADS"] = threads
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = threads
    # Requests run in a pool of threads, and glibc gives threads their own heaps, which keep
    # what a decoded image freed: after a few large images at once a worker stayed 100 MB
    # bigger. Blocks of 1 MB and more (decoded images, Pillow's 16 MB blocks) are mapped
    # directly instead, and go back to the system when freed (BENCHMARKS.md, hostile inputs).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    # Each worker guards itself (lookalike.serving.worker): requests in progress, open
    # connections, the time to send a request head. Not UVICORN_LIMIT_CONCURRENCY: it counts
    # half-open connections, so a few hundred of them lock every client out.
    env.pop("UVICORN_LIMIT_CONCURRENCY", None)
    serving = settings.serving
    for key, (name, _default) in SERVER_LIMITS_ENV.items():
        env[name] = str(getattr(serving, key))
    # uvicorn reads its options from UVICORN_* too: no access-log line per request (a few %
    # of a worker's time; UVICORN_ACCESS_LOG=true in the environment turns it back on).
    env.setdefault("UVICORN_ACCESS_LOG", "false")
    return env


def server_url(settings: Settings, port: int) -> str:
    host = settings.serving.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def launch_server(settings: Settings, model_uri: str | None = None, port: int | None = None
                  ) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow models serve`` in the background and return (process, base URL) at once,
    before it answers (:func:`wait_ready`). The process leads its own process group: stop it
    with :func:`stop_server`. Output goes to ``LOOKALIKE_HOME/logs/serve-<port>.log``."""
    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    model_uri = model_uri or default_model_uri(settings)
    port = port or free_port(settings.serving.host)
    logs = settings.home_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"serve-{port}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(server_command(settings, model_uri, port),
                                   env=server_env(settings), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    process.log_path = log_path  # type: ignore[attr-defined]
    process.model_uri = model_uri  # type: ignore[attr-defined]
    return process, server_url(settings, port)


def wait_ready(settings: Settings, process: subprocess.Popen, url: str,
               timeout: float | None = None) -> None:
    """Block until a launched server's ``/ping`` answers; stop it and raise if it does not."""
    try:
        wait_http(f"{url}/ping", timeout or settings.serving.startup_timeout_seconds, process,
                  getattr(process, "log_path", None))
    except BaseException:
        stop_server(process)
        raise
    log.info("model server %s ready at %s (pid %s)", getattr(process, "model_uri", "?"), url,
             process.pid)


def start_server(settings: Settings, model_uri: str | None = None, port: int | None = None,
                 timeout: float | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow models serve`` in the background; return (process, base URL) once
    ``/ping`` answers (:func:`launch_server`, then :func:`wait_ready`)."""
    process, url = launch_server(settings, model_uri, port)
    wait_ready(settings, process, url, timeout)
    return process, url


def stop_server(process: subprocess.Popen, grace: float = 10.0) -> int | None:
    """SIGTERM the server's process group (uvicorn and its workers), SIGKILL after ``grace``."""
    return stop_process(process, grace)


def serve(settings: Settings, model_uri: str | None = None, port: int | None = None) -> dict:
    """Run the REST server in the foreground until it exits or Ctrl-C / SIGTERM."""
    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    model_uri = model_uri or default_model_uri(settings)
    port = port or settings.serving.port
    command = server_command(settings, model_uri, port)
    print(f"serving {model_uri} at {server_url(settings, port)} (Ctrl-C stops)", file=sys.stderr)
    process = subprocess.Popen(command, env=server_env(settings), start_new_session=True)
    forwarded: list[int] = []

    def forward(signum, _frame):
        forwarded.append(signum)
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_server(process)
    # After Ctrl-C mlflow's click exits 1 ("Aborted!"): a stop asked for is not a failure.
    return {"model_uri": model_uri, "url": server_url(settings, port), "returncode": code,
            "stopped_by_signal": bool(forwarded)}


def post_json(url: str, payload: dict, timeout: float = 30.0) -> tuple[int, Any]:
    """POST ``payload`` to ``url``; (status, parsed JSON or text). Small stdlib client.

    A server may answer before it has read the body (HTTP 413 for an oversized one) and close:
    the unsent rest of the body is dropped and the answer is still read.
    """
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        try:
            connection.request("POST", parts.path or "/", body=json.dumps(payload).encode("utf-8"),
                               headers={"Content-Type": "application/json"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early; the response is waiting in the socket
        response = connection.getresponse()
        status, body = response.status, response.read()
    finally:
        connection.close()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", errors="replace")

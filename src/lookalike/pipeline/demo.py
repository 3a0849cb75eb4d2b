"""``lookalike demo``: the pipeline, a catalogue sample, then the REST server and the Streamlit
app on loopback until Ctrl-C / SIGTERM, which stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lookalike.app_env import (DEFAULT_MAX_DECODE_BYTES, ENDPOINT_ENV, MAX_DECODE_BYTES_ENV,
                               MAX_UPLOAD_BYTES_ENV, MAX_UPLOAD_PIXELS_ENV, SAMPLE_ENV, TOKEN_ENV,
                               upload_size_mb)
from lookalike.catalogue.tables import catalogue_table
from lookalike.config import Settings
from lookalike.console import say
from lookalike.pipeline.engine import run_steps
from lookalike.pipeline.sample import sample_step
from lookalike.pipeline.steps import run_pipeline, serve_commands
from lookalike.processes import stop_process, wait_http


def app_script() -> Path:
    """streamlit_app/app.py of the checkout this package runs from."""
    return Path(__file__).resolve().parents[3] / "streamlit_app" / "app.py"


def start_app(endpoint: str, port: int, sample_path: str | Path | None = None,
              token: str | None = None, host: str = "127.0.0.1", timeout: float = 60.0,
              log_file: str | Path | None = None, max_upload_bytes: int = 10_000_000,
              max_upload_pixels: int = 25_000_000,
              max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> tuple[subprocess.Popen, str]:
    """Start ``streamlit run streamlit_app/app.py`` on host:port against ``endpoint``.

    The token (if any) reaches the app through its environment only. Streamlit's developer
    toolbar is hidden (``client.toolbarMode minimal``). Returns (process, app URL) once
    Streamlit's health check answers. The process runs in its own session so
    :func:`stop_process` can end it with its children.
    """
    script = app_script()
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: the demo app ships with the repository, "
                                "not the wheel")
    env = dict(os.environ)
    env[ENDPOINT_ENV] = endpoint
    if sample_path:
        env[SAMPLE_ENV] = str(sample_path)
    if token:
        env[TOKEN_ENV] = token
    env[MAX_UPLOAD_BYTES_ENV] = str(max_upload_bytes)
    env[MAX_UPLOAD_PIXELS_ENV] = str(max_upload_pixels)
    env[MAX_DECODE_BYTES_ENV] = str(max_decode_bytes)
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    command = [sys.executable, "-m", "streamlit", "run", str(script),
               "--server.address", host, "--server.port", str(port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
               # The endpoint refuses larger images anyway; refuse them at the upload already.
               "--server.maxUploadSize", str(upload_size_mb(max_upload_bytes))]
    output = open(log_file, "ab") if log_file else subprocess.DEVNULL
    try:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   cwd=str(script.parents[1]))
    finally:
        if log_file:
            output.close()
    url = f"http://{host}:{port}"
    try:
        wait_http(f"{url}/_stcore/health", timeout, process, log_file)
    except BaseException:
        stop_process(process)
        raise
    return process, url


def _stop_local_spark() -> None:
    """Free the driver JVM before the servers start (locally only; Databricks owns its own)."""
    from lookalike.spark import on_databricks

    if on_databricks() or "pyspark" not in sys.modules:
        return
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    # stop() leaves the driver JVM running; it exits when its stdin (our pipe) closes.
    gateway = SparkContext._gateway
    if gateway is not None:
        try:
            gateway.shutdown()
            proc = getattr(gateway, "proc", None)
            if proc is not None:
                proc.stdin.close()
                proc.wait(timeout=20)
        except Exception as error:  # noqa: BLE001 - freeing memory is best effort
            say("demo", f"could not stop the Spark JVM ({error!r}); continuing")
        SparkContext._gateway = None
        SparkContext._jvm = None


def run_demo(settings: Settings, run_pipeline_first: bool = True, app_port: int = 8501,
             sample_size: int = 200) -> dict:
    """Pipeline (skipping finished steps), catalogue sample, REST server, Streamlit app.

    Prints both URLs and blocks until Ctrl-C / SIGTERM or until either process exits, then
    stops both. Returns a summary dict (URLs, pipeline summary, how it ended).
    """
    from lookalike.serving.server import launch_server, wait_ready

    summary = run_pipeline(settings) if run_pipeline_first else None
    if catalogue_table(settings, "products").version_without_spark() is None:
        sample_path = None
        say("demo", "no products table yet: the app's catalogue browsing stays off")
    else:
        sample = run_steps(settings, [sample_step(sample_size)], label="catalogue sample")
        sample_path = sample["outputs"]["export-sample"]["path"]
    _stop_local_spark()

    model_uri = serve_commands(settings)["model_uri"]
    server = app = None
    endpoint = app_url = None
    stopped_by = "process exit"
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        say("demo", f"starting REST server for {model_uri} on {settings.serving.host}:"
             f"{settings.serving.port}")
        # The app starts while the server loads its model: both start-ups overlap.
        server, endpoint = launch_server(settings, model_uri, settings.serving.port)
        say("demo", f"starting Streamlit app on 127.0.0.1:{app_port}")
        app, app_url = start_app(endpoint, app_port, sample_path,
                                 max_upload_bytes=settings.serving.max_image_bytes,
                                 max_upload_pixels=settings.serving.max_pixels,
                                 max_decode_bytes=settings.serving.max_decode_bytes)
        wait_ready(settings, server, endpoint)
        print(f"\n  REST endpoint : {endpoint}/invocations\n  Demo app      : {app_url}\n"
              "  Ctrl-C stops both.\n", file=sys.stderr, flush=True)
        while server.poll() is None and app.poll() is None:
            time.sleep(0.5)
        which = "REST server" if server.poll() is not None else "Streamlit app"
        say("demo", f"{which} exited; stopping the other")
    except KeyboardInterrupt:
        stopped_by = {signal.SIGTERM: "SIGTERM"}.get(received[-1] if received else None,
                                                     "Ctrl-C")
        say("demo", f"{stopped_by}: stopping the app and the REST server")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_process(app)
        stop_process(server)
    return {"endpoint": endpoint, "app_url": app_url,
            "catalogue_sample": sample_path, "pipeline": summary, "stopped_by": stopped_by}

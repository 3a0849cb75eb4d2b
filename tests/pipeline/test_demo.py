"""`lookalike demo`: the app process alone, then the whole command on a served champion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from lookalike.pipeline.demo import start_app
from lookalike.processes import free_port, stop_process


def test_start_and_stop_app_process(tmp_path):
    """start_app starts `streamlit run` and waits for its health check; stop_process ends it."""
    port = free_port()
    process, url = start_app("http://127.0.0.1:9", port,
                                      tmp_path / "none.parquet",
                                      log_file=tmp_path / "app.log")
    try:
        assert url == f"http://127.0.0.1:{port}"
        assert process.poll() is None
    finally:
        stop_process(process, grace=10)
    assert process.poll() is not None


@pytest.mark.slow
def test_demo_prints_both_urls_serves_the_champion_and_stops_both_on_sigterm(packaged_model):
    """`lookalike demo --no-pipeline` on a home with a champion: the catalogue sample, then the
    REST server and the app, started together (issue 22), both answering once the URLs print;
    SIGTERM stops both and the command exits 0 with its JSON line."""
    from lookalike.serving.server import post_json

    settings = packaged_model.settings
    port, app_port = free_port(), free_port()
    env = {**os.environ, "LOOKALIKE_HOME": str(settings.home_path),
           "LOOKALIKE__CATALOGUE__DATABASE": settings.catalogue.database,
           "LOOKALIKE__REGISTRY__MODEL_NAME": settings.registry.model_name,
           "LOOKALIKE__SERVING__PORT": str(port), "LOOKALIKE__SPARK__MASTER": "local[2]",
           "LOOKALIKE__SPARK__SHUFFLE_PARTITIONS": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lookalike.cli", "demo", "--no-pipeline",
         "--app-port", str(app_port)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while not any("Demo app" in line for line in lines):
            line = process.stderr.readline()
            assert line and time.monotonic() < deadline, "".join(lines[-20:])
            lines.append(line)
        endpoint = f"http://127.0.0.1:{port}"
        assert f"REST endpoint : {endpoint}/invocations" in "".join(lines)
        first = packaged_model.products.product_id.iloc[0]
        status, body = post_json(f"{endpoint}/invocations", {
            "dataframe_records": [{"product_id": first}], "params": {"k": 3}})
        assert status == 200 and len(body["predictions"]) == 3, body
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/_stcore/health") as answer:
            assert answer.status == 200
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        stop_process(process)
    assert process.returncode == 0, "".join(lines) + err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped_by"] == "SIGTERM" and summary["app_url"].endswith(str(app_port))
    for url in (f"{endpoint}/ping", f"http://127.0.0.1:{app_port}/_stcore/health"):
        with pytest.raises(OSError):  # both stopped: nothing listens any more
            urllib.request.urlopen(url, timeout=5)

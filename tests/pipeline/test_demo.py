"""The demo's app process: start, health check, stop."""

from __future__ import annotations

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

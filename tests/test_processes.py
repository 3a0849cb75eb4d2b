"""Background processes: a free port, waiting for HTTP, stopping a whole process group."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lookalike.processes import free_port, log_tail, stop_process, wait_http


def test_wait_http_then_stop_the_group_with_its_children(tmp_path):
    port = free_port()
    # A server that also spawns a child which ignores nothing: both must end with the group.
    script = (f"import http.server, subprocess, sys; "
              f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
              f"http.server.test(http.server.SimpleHTTPRequestHandler, port={port}, "
              f"bind='127.0.0.1')")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/", 30, process)
    finally:
        stop_process(process, grace=5)
    assert process.returncode is not None
    deadline = time.monotonic() + 5
    while _live_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_members(process.pid) == []  # the child went with its group


def _live_members(group: int) -> list[int]:
    """Running (not zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_wait_http_fails_early_with_the_log_tail(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("starting\nboom: port in use\n")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="code 3(.|\n)*boom: port in use"):
        wait_http(f"http://127.0.0.1:{free_port()}/", 30, process, log)
    with pytest.raises(TimeoutError):
        wait_http(f"http://127.0.0.1:{free_port()}/", 0.5)
    assert log_tail(None) == "" and "boom" in log_tail(log, 1)

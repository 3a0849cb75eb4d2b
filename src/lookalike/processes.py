"""Background server processes: a free port, waiting for HTTP, stopping a process group.

The REST server (:mod:`lookalike.serving.server`) and the demo's Streamlit app
(:mod:`lookalike.pipeline.demo`) both start in their own session (``start_new_session=True``), so
:func:`stop_process` can end them together with every child they spawned (uvicorn workers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: str | Path | None, lines: int = 40) -> str:
    """The last ``lines`` of a log file, framed for an error message ("" if there is none)."""
    if path is None or not Path(path).exists():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    return "\n--- log ---\n" + "\n".join(text)


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None,
              log_path: str | Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``process`` exits.

    Errors carry the tail of ``log_path`` so a server that died says why.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before {url} "
                               f"answered{log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s (last error: {last})"
                       f"{log_tail(log_path)}")


def stop_process(process: subprocess.Popen | None, grace: float = 10.0) -> int | None:
    """SIGTERM (its process group when it leads one), then SIGKILL after ``grace`` seconds."""
    if process is None:
        return None
    if process.poll() is not None:
        return process.returncode
    try:
        own_group = os.getpgid(process.pid) == process.pid
    except OSError:
        own_group = False

    def send(sig: int) -> None:
        try:
            if own_group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait(grace)
    return process.returncode

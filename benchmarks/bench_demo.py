"""Benchmark: `make demo` on a fresh home, as a new user runs it, until both URLs print.

Run: .venv/bin/python -m benchmarks.bench_demo [--home DIR] [--repo DIR]
Starts `make demo` in ``--repo`` (default: this checkout; its venv must be built, so the time
is "after setup", setup's idempotent check included) with ``LOOKALIKE_HOME`` a fresh folder,
stops the clock when the "Demo app" URL prints, then queries the REST endpoint once and opens
the app's page, sends Ctrl-C and waits for the command to end. Prints one JSON line: seconds
to the URLs, whole-machine CPU-seconds until then, each pipeline step's seconds, both answers'
HTTP status and the exit code. Target (issue 22): <= 8 minutes on 2 cores, quiet.
Uses the default ports (REST 5001, app 8501), which must be free.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

STEP = re.compile(r"\[pipeline\] \(\d+/\d+\) ([\w-]+): done in ([\d.]+)s")


def busy_jiffies() -> int:
    """Busy time of the whole machine so far (/proc/stat: all but idle and iowait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return user + nice + system + irq + softirq + steal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="a fresh LOOKALIKE_HOME (default: a new temp dir)")
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="lookalike-demo-")
    if Path(home).exists() and any(Path(home).iterdir()):
        parser.error(f"--home {home} is not empty: the demo must start from nothing")
    ticks = os.sysconf("SC_CLK_TCK")
    busy, started = busy_jiffies(), time.perf_counter()
    process = subprocess.Popen(["make", "demo"], cwd=args.repo,
                               env={**os.environ, "LOOKALIKE_HOME": home},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    steps, urls_seconds, cpu_seconds = {}, None, None
    for line in process.stdout:
        if match := STEP.search(line):
            steps[match.group(1)] = float(match.group(2))
        if "Demo app" in line:
            urls_seconds = time.perf_counter() - started
            cpu_seconds = (busy_jiffies() - busy) / ticks
            break
    result = {"home": home, "urls_seconds": urls_seconds, "cpu_seconds": cpu_seconds,
              "steps": steps}
    try:
        if urls_seconds is not None:
            query = json.dumps({"dataframe_records": [{"product_id": "fmnist-test-00042"}],
                                "params": {"k": 3}}).encode()
            request = urllib.request.Request("http://127.0.0.1:5001/invocations", query,
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                result["rest_status"] = answer.status
                result["rest_answers"] = len(json.loads(answer.read())["predictions"])
            with urllib.request.urlopen("http://127.0.0.1:8501", timeout=60) as page:
                result["app_status"] = page.status
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    result["exit_code"] = process.returncode
    print(json.dumps(result))


if __name__ == "__main__":
    main()

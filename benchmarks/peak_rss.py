"""Peak memory of a command and everything it starts (Spark's JVM, its Python workers, Horovod
ranks): the sum of RSS over the process tree, sampled every 0.2 s, and the peak of the command's
own process. Prints one JSON line after the command's own output.

    .venv/bin/python -m benchmarks.peak_rss -- .venv/bin/lookalike embed --profile photos
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SystemExit(__doc__)
    started = time.monotonic()
    child = subprocess.Popen(argv)
    root = psutil.Process(child.pid)
    peak_tree = peak_root = 0
    while child.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = [p.memory_info().rss for p in tree if p.is_running()]
        except psutil.Error:
            rss = []
        if rss:
            peak_root = max(peak_root, rss[0])
            peak_tree = max(peak_tree, sum(rss))
        time.sleep(0.2)
    print(json.dumps({"command": " ".join(argv), "returncode": child.returncode,
                      "seconds": round(time.monotonic() - started, 1),
                      "peak_tree_rss_mb": round(peak_tree / 2**20, 1),
                      "peak_command_rss_mb": round(peak_root / 2**20, 1)}))
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())

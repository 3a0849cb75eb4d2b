"""Job entry point: check the challenger before promotion (signature, fresh environment,
index/model consistency, latency); fails the task when it does not pass.

Thin wrapper for Databricks tasks and local runs: `python jobs/validate.py [options]` is
`lookalike validate [options]`.
"""

import pathlib
import sys

# Lets the job run from a checkout where the wheel is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from lookalike.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))

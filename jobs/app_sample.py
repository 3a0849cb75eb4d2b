"""Job entry point: export the catalogue sample the demo app browses.

Thin wrapper for Databricks tasks and local runs: `python jobs/app_sample.py [options]` is
`lookalike app-sample [options]`.
"""

import pathlib
import sys

# Lets the job run from a checkout where the wheel is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from lookalike.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["app-sample", *sys.argv[1:]]))

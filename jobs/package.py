"""Job entry point: package model + index as an MLflow pyfunc, register it as challenger.

Thin wrapper for Databricks tasks and local runs: `python jobs/package.py [options]` is
`lookalike package [options]`.
"""

import pathlib
import sys

# Lets the job run from a checkout where the wheel is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from lookalike.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["package", *sys.argv[1:]]))

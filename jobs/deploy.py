"""Job entry point: point the Databricks model serving endpoint at the champion version.

Thin wrapper for Databricks tasks and local runs: `python jobs/deploy.py [options]` is
`lookalike deploy [options]`.
"""

import pathlib
import sys

# Lets the job run from a checkout where the wheel is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from lookalike.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["deploy", *sys.argv[1:]]))

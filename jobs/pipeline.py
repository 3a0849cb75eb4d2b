"""Job entry point: run the whole pipeline, skipping steps whose inputs did not change.

Thin wrapper for Databricks tasks and local runs: `python jobs/pipeline.py [options]` is
`lookalike pipeline [options]`.
"""

import pathlib
import sys

# Lets the job run from a checkout where the wheel is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from lookalike.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))

"""Job entry point: write top-k 'more like this' neighbours of every product to Delta.

Thin wrapper for Databricks tasks and local runs: `python jobs/recommend.py [options]` is
`lookalike recommend [options]`.
"""

import pathlib
import sys

# Lets the job run from a checkout where the wheel is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from lookalike.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["recommend", *sys.argv[1:]]))

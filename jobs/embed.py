"""Job entry point: embed new or changed products into the Delta embeddings table.

Thin wrapper for Databricks tasks and local runs: `python jobs/embed.py [options]` is
`lookalike embed [options]`.
"""

import pathlib
import sys

# Lets the job run from a checkout where the wheel is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from lookalike.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))

"""Job entry point: build the ANN index from the embeddings table.

Thin wrapper for Databricks tasks and local runs: `python jobs/build_index.py [options]` is
`lookalike build-index [options]`.
"""

import pathlib
import sys

# Lets the job run from a checkout where the wheel is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from lookalike.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["build-index", *sys.argv[1:]]))

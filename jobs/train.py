"""Job entry point: train the embedding model (Horovod on Spark when --processes > 1).

Thin wrapper for Databricks tasks and local runs: `python jobs/train.py [options]` is
`lookalike train [options]`.
"""

import pathlib
import sys

# Lets the job run from a checkout where the wheel is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from lookalike.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

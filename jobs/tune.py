"""Job entry point: tune hyperparameters with Hyperopt SparkTrials.

Thin wrapper for Databricks tasks and local runs: `python jobs/tune.py [options]` is
`lookalike tune [options]`.
"""

import pathlib
import sys

# Lets the job run from a checkout where the wheel is not installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

from lookalike.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))

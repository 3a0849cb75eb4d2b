"""Fixtures of the demo-app tests: the repository root on sys.path (the app is not part of the
wheel) and the catalogue sample the app browses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE_ROWS = 30


@pytest.fixture(scope="session")
def app_sample(packaged_model, spark, tmp_path_factory) -> tuple[Path, dict]:
    """The catalogue sample the pipeline exports, for the served model's catalogue."""
    from lookalike.pipeline.sample import export_catalogue_sample

    path = tmp_path_factory.mktemp("app") / "catalogue_sample.parquet"
    result = export_catalogue_sample(packaged_model.settings, n=SAMPLE_ROWS, path=path,
                                     spark=spark)
    return path, result

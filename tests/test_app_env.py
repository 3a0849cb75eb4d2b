"""The demo app's environment names and where its catalogue sample is looked for."""

from pathlib import Path

from lookalike.app_env import SAMPLE_ENV, catalogue_sample_path


def test_sample_path_precedence(tmp_path):
    explicit = tmp_path / "s.parquet"
    assert catalogue_sample_path("/h", {SAMPLE_ENV: str(explicit)}) == explicit
    assert catalogue_sample_path("/h", {}) == Path("/h/app/catalogue_sample.parquet")
    assert catalogue_sample_path(None, {"LOOKALIKE_HOME": "/x"}) == Path(
        "/x/app/catalogue_sample.parquet")
    assert catalogue_sample_path(None, {}) == Path("~/.lookalike").expanduser() / "app" / \
        "catalogue_sample.parquet"

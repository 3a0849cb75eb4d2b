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


def test_upload_size_mb_never_refuses_what_the_app_accepts():
    from lookalike.app_env import DEFAULT_MAX_UPLOAD_BYTES, upload_size_mb

    assert upload_size_mb(DEFAULT_MAX_UPLOAD_BYTES) == 10
    for limit in (1, 999_999, 1_000_001, 10_500_000, 20_000_000):
        # Streamlit's MB are MiB: the flag lets every upload within the app's limit through.
        assert limit <= upload_size_mb(limit) * 1024 * 1024 < limit + 2 * 1024 * 1024

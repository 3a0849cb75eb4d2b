"""What the demo app (``streamlit_app/``) reads from its environment: one definition shared by
the app and by ``lookalike demo``, which starts it. No dependencies, so the app stays light."""

from __future__ import annotations

import os
import typing
from pathlib import Path

ENDPOINT_ENV = "LOOKALIKE_ENDPOINT"
TOKEN_ENV = "LOOKALIKE_TOKEN"
# As a Databricks App: the name of the model serving endpoint to query, with the app's own
# service principal (credentials the platform puts in the app's environment; no token here).
SERVING_ENDPOINT_ENV = "LOOKALIKE_SERVING_ENDPOINT"
SAMPLE_ENV = "LOOKALIKE_CATALOGUE_SAMPLE"
# "1" lets visitors edit the endpoint URL (a developer's setting; the token never follows an
# edited URL). Off by default: the endpoint is what the server was configured with.
ALLOW_ENDPOINT_EDIT_ENV = "LOOKALIKE_ALLOW_ENDPOINT_EDIT"
MAX_UPLOAD_BYTES_ENV = "LOOKALIKE_MAX_UPLOAD_BYTES"
MAX_UPLOAD_PIXELS_ENV = "LOOKALIKE_MAX_UPLOAD_PIXELS"
# Uploads whose decoding would allocate more (read from the header: PNG, WebP and progressive
# JPEG decode at full size) are refused before the app decodes them: the serving default.
MAX_DECODE_BYTES_ENV = "LOOKALIKE_MAX_DECODE_BYTES"
DEFAULT_ENDPOINT = "http://127.0.0.1:5001"
DEFAULT_MAX_UPLOAD_BYTES = 10_000_000
DEFAULT_MAX_UPLOAD_PIXELS = 25_000_000
DEFAULT_MAX_DECODE_BYTES = 50_000_000
DEFAULT_HOME = "~/.lookalike"
# Relative to LOOKALIKE_HOME; written by lookalike.pipeline.sample.export_catalogue_sample.
SAMPLE_RELATIVE_PATH = Path("app") / "catalogue_sample.parquet"


def catalogue_sample_path(home: str | Path | None = None,
                          environ: typing.Mapping[str, str] | None = None) -> Path:
    """``LOOKALIKE_CATALOGUE_SAMPLE`` if set, else ``<home>/app/catalogue_sample.parquet``
    (``home``: given, else ``LOOKALIKE_HOME``, else ``~/.lookalike``)."""
    environ = os.environ if environ is None else environ
    if environ.get(SAMPLE_ENV):
        return Path(environ[SAMPLE_ENV]).expanduser()
    home = home or environ.get("LOOKALIKE_HOME") or DEFAULT_HOME
    return Path(home).expanduser() / SAMPLE_RELATIVE_PATH


def upload_size_mb(max_upload_bytes: int) -> int:
    """Streamlit's ``--server.maxUploadSize`` (whole MiB) for the app's upload limit in bytes:
    never below it, so the app's own check is the one that says what is wrong, yet far below
    Streamlit's 200 MB default (the server refuses larger bodies before the app sees them)."""
    return max(1, -(-max_upload_bytes // 1_000_000))

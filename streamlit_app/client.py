"""A small REST client for the Lookalike endpoint, used by the Streamlit app.

Pure functions and one class, no Streamlit import, so they are testable on their own and the
app stays a thin page. The endpoint is either the local ``mlflow models serve`` URL
(``http://127.0.0.1:5001``) or a Databricks model serving URL
(``https://<workspace>/serving-endpoints/<name>/invocations``) with a bearer token, or, as a
Databricks App, a serving endpoint by name (``LOOKALIKE_SERVING_ENDPOINT``) queried with the
app's service principal through the Databricks SDK (:func:`workspace_auth`).

Request/response contract (see the package's serving module)::

    POST <endpoint>/invocations
    {"dataframe_records": [{"image": "<base64>"}] or [{"product_id": "..."}],
     "params": {"k": 10, "category": "Sneaker", "exclude_self": true, "include_images": true}}
    -> {"predictions": [{"query": 0, "rank": 1, "product_id": "...", "category": "...",
                         "distance": 0.03, "image": "<base64 PNG>"}, ...]}
    bad input -> HTTP 400 {"error_code": "INVALID_PARAMETER_VALUE", "message": "..."}
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import requests

from lookalike.app_env import (ALLOW_ENDPOINT_EDIT_ENV, DEFAULT_ENDPOINT,  # noqa: F401
                               DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MAX_UPLOAD_PIXELS, ENDPOINT_ENV,
                               MAX_UPLOAD_BYTES_ENV, MAX_UPLOAD_PIXELS_ENV, SAMPLE_ENV,
                               SERVING_ENDPOINT_ENV, TOKEN_ENV, catalogue_sample_path)

SAMPLE_COLUMNS = ("product_id", "category", "title", "thumbnail")
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp")

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
)


@dataclass(frozen=True)
class AppConfig:
    """What the operator configured, read from the server's environment only. The token never
    leaves the server: it is not rendered, not a widget value, and only sent to ``endpoint``."""

    endpoint: str
    token: str | None = field(default=None, repr=False)
    allow_endpoint_edit: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS
    # A Databricks App: the endpoint is the workspace's serving endpoint, and requests carry
    # the app's service principal credentials (from the environment, via the SDK).
    workspace: bool = False

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> "AppConfig":
        import os

        environ = os.environ if environ is None else environ
        name = (environ.get(SERVING_ENDPOINT_ENV) or "").strip()
        if name:
            host = (environ.get("DATABRICKS_HOST") or "").strip().rstrip("/")
            if not host:
                raise EndpointError(f"{SERVING_ENDPOINT_ENV} names a Databricks serving "
                                    "endpoint, but DATABRICKS_HOST is not set (a Databricks App "
                                    "sets it)")
            if not host.startswith(("http://", "https://")):
                host = "https://" + host        # Databricks Apps give the bare host name
            endpoint = f"{host}/serving-endpoints/{name}/invocations"
        else:
            endpoint = (environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).strip()
        return cls(
            endpoint=endpoint, workspace=bool(name),
            token=(environ.get(TOKEN_ENV) or "").strip() or None,
            allow_endpoint_edit=environ.get(ALLOW_ENDPOINT_EDIT_ENV, "").lower()
            in ("1", "true", "yes"),
            max_upload_bytes=int(environ.get(MAX_UPLOAD_BYTES_ENV) or DEFAULT_MAX_UPLOAD_BYTES),
            max_upload_pixels=int(environ.get(MAX_UPLOAD_PIXELS_ENV)
                                  or DEFAULT_MAX_UPLOAD_PIXELS))

    def token_for(self, endpoint: str) -> str | None:
        """The bearer token for ``endpoint``: only ever the configured endpoint's."""
        return self.token if self._configured(endpoint) else None

    def workspace_for(self, endpoint: str) -> bool:
        """Whether requests to ``endpoint`` carry the app's workspace credentials: only to
        the configured serving endpoint, never to an edited URL."""
        return self.workspace and self._configured(endpoint)

    def _configured(self, endpoint: str) -> bool:
        return invocations_url(endpoint) == invocations_url(self.endpoint)


def workspace_auth() -> Callable[[], dict[str, str]]:
    """Headers that authenticate as this process's Databricks identity (a Databricks App: its
    service principal, from DATABRICKS_CLIENT_ID / _SECRET; elsewhere DATABRICKS_TOKEN or a
    CLI profile), refreshed by the SDK as tokens expire."""
    from databricks.sdk.core import Config

    return Config().authenticate


class EndpointError(RuntimeError):
    """The endpoint could not be reached or refused the request; ``str()`` is for people."""

    def __init__(self, message: str, status: int | None = None, error_code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code


@dataclass(frozen=True)
class Neighbour:
    query: int
    rank: int
    product_id: str
    category: str
    distance: float
    image: bytes | None = None


@dataclass
class LookalikeClient:
    """Calls ``/invocations`` of one endpoint, reusing one HTTP session (connection pooling)."""

    endpoint: str
    token: str | None = None
    timeout: float = 30.0
    session: requests.Session = field(default_factory=requests.Session, repr=False)
    # Headers from the workspace's identity (workspace_auth), instead of a fixed token.
    auth: Callable[[], dict[str, str]] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return invocations_url(self.endpoint)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.auth is not None:
            headers.update(self.auth())
        return headers

    def invoke(self, records: Sequence[dict[str, Any]], params: dict[str, Any]) -> list[Neighbour]:
        payload = {"dataframe_records": list(records), "params": params}
        try:
            response = self.session.post(self.url, json=payload, headers=self.headers(),
                                         timeout=self.timeout)
        except requests.ConnectionError as error:
            raise EndpointError(f"Cannot reach the recommendation endpoint at {self.url}: "
                                f"connection refused or host unreachable ({type(error).__name__}). "
                                "Is the server running?") from error
        except requests.Timeout as error:
            raise EndpointError(f"The recommendation endpoint at {self.url} did not answer "
                                f"within {self.timeout:.0f} s.") from error
        except requests.RequestException as error:
            raise EndpointError(f"Request to {self.url} failed: {error}") from error
        return parse_response(response.status_code, response.text)

    def similar_to_image(self, image: bytes, **params: Any) -> list[Neighbour]:
        return self.invoke([{"image": encode_image(image)}], request_params(**params))

    def similar_to_product(self, product_id: str, **params: Any) -> list[Neighbour]:
        return self.invoke([{"product_id": product_id}], request_params(**params))


def invocations_url(endpoint: str) -> str:
    """``/invocations`` URL of an endpoint given as a base URL or already as that URL."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint:
        raise EndpointError("No endpoint URL set: enter one in the sidebar or set "
                            f"{ENDPOINT_ENV}.")
    if not endpoint.startswith(("http://", "https://")):
        raise EndpointError(f"Endpoint URL must start with http:// or https://, got {endpoint!r}.")
    if endpoint.endswith("/invocations"):
        return endpoint
    return endpoint + "/invocations"


def request_params(k: int = 10, category: str | None = None, exclude_self: bool = True,
                   include_images: bool = True) -> dict[str, Any]:
    """The ``params`` object; category is left out when no filter is wanted."""
    params: dict[str, Any] = {"k": int(k), "exclude_self": bool(exclude_self),
                              "include_images": bool(include_images)}
    if category:
        params["category"] = category
    return params


def encode_image(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_image(text: str | None) -> bytes | None:
    if not text:
        return None
    return base64.b64decode(text)


def parse_response(status: int, body: str) -> list[Neighbour]:
    """Neighbours from a response, or EndpointError carrying the server's own message."""
    import json

    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if status != 200:
        message = None
        code = None
        if isinstance(data, dict):
            message = data.get("message") or data.get("error")
            code = data.get("error_code")
        if not message:
            message = (body or "").strip()[:500] or f"HTTP {status}"
        if status in (401, 403):
            prefix = "The endpoint refused the credentials"
        elif 400 <= status < 500:
            prefix = "The endpoint rejected the request"
        else:
            prefix = "The endpoint failed"
        raise EndpointError(f"{prefix} (HTTP {status}): {message}", status=status, error_code=code)
    if not isinstance(data, dict) or not isinstance(data.get("predictions"), list):
        raise EndpointError("The endpoint answered without a 'predictions' list: "
                            f"{(body or '')[:200]!r}", status=status)
    neighbours = []
    for row in data["predictions"]:
        neighbours.append(Neighbour(
            query=int(row.get("query", 0)), rank=int(row.get("rank", 0)),
            product_id=str(row.get("product_id")), category=str(row.get("category")),
            distance=float(row.get("distance", float("nan"))),
            image=decode_image(row.get("image"))))
    return sorted(neighbours, key=lambda n: (n.query, n.rank))


def sniff_image_format(data: bytes) -> str | None:
    """JPEG, PNG or WEBP from the first bytes; None for anything else."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_upload(name: str, data: bytes, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS) -> str | None:
    """A plain-language problem with an uploaded file, or None if it can be sent.

    Only cheap checks, before anything is decoded: size, magic bytes, and width x height read
    from the header (a small file can declare a huge image). Decoding is the endpoint's job,
    and its 400 message is shown as is.
    """
    if not data:
        return f"{name} is empty."
    if len(data) > max_bytes:
        return f"{name} is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB."
    if sniff_image_format(data) is None:
        return f"{name} is not a JPEG, PNG or WebP image."
    size = header_size(data)
    # An unreadable header is the endpoint's to judge: its 400 says exactly what is wrong.
    if size is None:
        return None
    if size == DECOMPRESSION_BOMB:
        return f"{name} declares far more pixels than the limit of {max_pixels / 1e6:.0f} MP."
    if size[0] * size[1] > max_pixels:
        return (f"{name} is {size[0]} x {size[1]} pixels; the limit is "
                f"{max_pixels / 1e6:.0f} megapixels.")
    return None


# header_size's answer for headers Pillow refuses outright (over twice its own pixel limit).
DECOMPRESSION_BOMB = (-1, -1)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header, without decoding any pixel; None if unreadable."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we judge the size here
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError:
        return DECOMPRESSION_BOMB
    except Exception:  # noqa: BLE001 - any header the decoder cannot read
        return None


def default_sample_path(environ: dict[str, str] | None = None) -> Path:
    """LOOKALIKE_CATALOGUE_SAMPLE, else <LOOKALIKE_HOME or ~/.lookalike>/app/catalogue_sample.parquet."""
    return catalogue_sample_path(None, environ)


def read_catalogue_sample(path: str | Path, workspace: bool = False):
    """The exported catalogue sample as a DataFrame (thumbnail column: PNG bytes); None if absent.
    With ``workspace`` (a Databricks App, which mounts no Volume), a ``/Volumes/...`` path is
    read through the workspace's Files API as the app's service principal."""
    import io

    import pandas as pd

    path = Path(path)
    if path.exists():
        source = path
    elif workspace and str(path).startswith("/Volumes/"):
        source = _volume_file(str(path))
        if source is None:
            return None
    else:
        return None
    frame = pd.read_parquet(source if isinstance(source, Path) else io.BytesIO(source))
    missing = [c for c in ("product_id", "category", "thumbnail") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; re-export it with "
                         "`lookalike demo` or lookalike.pipeline.export_catalogue_sample")
    if "title" not in frame.columns:
        frame["title"] = None
    return frame.reset_index(drop=True)


def _volume_file(path: str) -> bytes | None:
    """A Unity Catalog Volume file's bytes (Files API), or None if it does not exist yet."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.errors import NotFound

    try:
        return WorkspaceClient().files.download(path).contents.read()
    except NotFound:
        return None


def random_page(frame, size: int, seed: int, category: str | None = None):
    """``size`` random rows (deterministic for a seed), optionally of one category."""
    if frame is None or len(frame) == 0:
        return frame
    if category:
        frame = frame[frame["category"] == category]
    if len(frame) <= size:
        return frame.reset_index(drop=True)
    rows = random.Random(seed).sample(range(len(frame)), size)
    return frame.iloc[rows].reset_index(drop=True)


def data_uri(data: bytes) -> str:
    """``data:image/...;base64,...`` of image bytes (for st.image: no media-file round trip)."""
    mime = {"JPEG": "image/jpeg", "WEBP": "image/webp"}.get(sniff_image_format(data) or "",
                                                            "image/png")
    return f"data:{mime};base64,{encode_image(data)}"


def caption(neighbour: Neighbour) -> str:
    return f"#{neighbour.rank} {neighbour.category} · distance {neighbour.distance:.3f}"

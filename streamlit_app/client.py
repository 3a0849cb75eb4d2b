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

Shop the look (``"look": true`` in params, sent only when asked for): every record also has
``garment`` (``top``, ``bottom``, ``shoes``, or ``whole`` when no person wears garments in the
photo) and ``box`` (``[left, top, right, bottom]`` in pixels of the upright original; null for
product rows), ``k`` records per garment. A model packaged without it answers HTTP 400 with
``look.enabled`` in the message (:func:`look_unsupported`).

The endpoint may be one a visitor typed (``LOOKALIKE_ALLOW_ENDPOINT_EDIT=1``), so the client
trusts its answers no further than the scoring server's contract: a plain http(s) URL only
(:func:`invocations_url`), no redirects followed, no ``~/.netrc`` credentials, at most
:data:`MAX_RESPONSE_BYTES` read, and of an error answer only a 400's ``message`` is shown
(:func:`parse_response`; the rest goes to the app's log).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3

from lookalike.app_env import (ALLOW_ENDPOINT_EDIT_ENV, DEFAULT_ENDPOINT,  # noqa: F401
                               DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_UPLOAD_BYTES,
                               DEFAULT_MAX_UPLOAD_PIXELS, ENDPOINT_ENV, MAX_DECODE_BYTES_ENV,
                               MAX_UPLOAD_BYTES_ENV, MAX_UPLOAD_PIXELS_ENV, SAMPLE_ENV,
                               SERVING_ENDPOINT_ENV, TOKEN_ENV, catalogue_sample_path,
                               upload_size_mb)

_log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("product_id", "category", "title", "thumbnail")
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp")
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP")
# Longest side of the page's preview of an upload.
PREVIEW_SIDE = 256
# Longest side of the shop-the-look preview (the upload, upright, with its garment boxes).
LOOK_PREVIEW_SIDE = 384
# What of a garment name the page shows (the server's names are short words).
_GARMENT_CHARS = 40
# The most of an answer the client reads. The largest the app asks for is k=50 neighbours with
# their thumbnails (serving.thumbnail_size 128: under 100 KB each in base64, ~5 MB in all);
# a longer answer is an error, not something to hold in memory.
MAX_RESPONSE_BYTES = 16_000_000
# How much of a 400's message is shown, and of any other answer logged.
_MESSAGE_CHARS = 1000

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
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
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
                                  or DEFAULT_MAX_UPLOAD_PIXELS),
            max_decode_bytes=int(environ.get(MAX_DECODE_BYTES_ENV) or DEFAULT_MAX_DECODE_BYTES))

    @property
    def upload_size_mb(self) -> int:
        """The upload widget's limit in MB (Streamlit's unit): the app's own, rounded up."""
        return upload_size_mb(self.max_upload_bytes)

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
    # Shop the look: the garment the record is a lookalike of, and its box in the upright
    # original's pixels (left, top, right, bottom); None in plain answers.
    garment: str | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class GarmentRow:
    """One garment of a shop-the-look answer: its name, its box, its lookalikes by rank."""

    query: int
    garment: str | None
    box: tuple[float, float, float, float] | None
    neighbours: tuple[Neighbour, ...]


class _NoNetrc(requests.auth.AuthBase):
    """Session auth that adds nothing. Without one, requests sends the ``~/.netrc`` login of
    whatever host it is asked for (an edited endpoint included); proxies and CA bundles from
    the environment still apply. The real credentials are headers (:meth:`headers`)."""

    def __call__(self, request):
        return request


def new_session() -> requests.Session:
    """A requests session that never sends ``~/.netrc`` credentials."""
    session = requests.Session()
    session.auth = _NoNetrc()
    return session


@dataclass
class LookalikeClient:
    """Calls ``/invocations`` of one endpoint, reusing one HTTP session (connection pooling)."""

    endpoint: str
    token: str | None = None
    timeout: float = 30.0
    session: requests.Session = field(default_factory=new_session, repr=False)
    # Headers from the workspace's identity (workspace_auth), instead of a fixed token.
    auth: Callable[[], dict[str, str]] | None = field(default=None, repr=False)
    max_response_bytes: int = MAX_RESPONSE_BYTES

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
        url = self.url
        deadline = time.monotonic() + self.timeout
        try:
            # Redirects are not followed: the POST would come back as a GET, and the request
            # would go wherever the endpoint points it. A 3xx is reported (parse_response).
            response = self.session.post(url, json=payload, headers=self.headers(),
                                         timeout=self.timeout, allow_redirects=False,
                                         stream=True)
        except requests.ConnectionError as error:
            raise EndpointError(f"Cannot reach the recommendation endpoint at {url}: "
                                f"connection refused or host unreachable ({type(error).__name__}). "
                                "Is the server running?") from error
        except requests.Timeout as error:
            raise EndpointError(f"The recommendation endpoint at {url} did not answer "
                                f"within {self.timeout:.0f} s.") from error
        except requests.RequestException as error:
            raise EndpointError(f"Request to {url} failed ({type(error).__name__}).") from error
        with response:
            try:
                body = read_body(response, self.max_response_bytes, deadline)
            except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
                raise EndpointError(f"The recommendation endpoint at {url} broke off its "
                                    f"answer ({type(error).__name__}).") from error
        return parse_response(response.status_code, body)

    def similar_to_image(self, image: bytes, **params: Any) -> list[Neighbour]:
        return self.invoke([{"image": encode_image(image)}], request_params(**params))

    def similar_to_product(self, product_id: str, **params: Any) -> list[Neighbour]:
        return self.invoke([{"product_id": product_id}], request_params(**params))


# What an endpoint URL may hold: RFC 3986's characters, less "?" and "#" (refused with their
# own message). No spaces, backslashes or non-ASCII, which URL parsers read differently.
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/\[\]@!$&'()*+,;=%]+")


def invocations_url(endpoint: str) -> str:
    """``/invocations`` URL of an endpoint given as a base URL or already as that URL.

    Only a plain http(s) URL is accepted: no ``user:password@`` (credentials are the server's
    token), no query or fragment (``...#`` or ``...?x=`` would swallow an appended
    ``/invocations``). The URL is rebuilt from scheme, host and path, so the request always
    goes to ``<path>/invocations`` of that host.
    """
    endpoint = endpoint.strip()
    shown = repr(endpoint[:200])
    if not endpoint:
        raise EndpointError("No endpoint URL set: enter one in the sidebar or set "
                            f"{ENDPOINT_ENV}.")
    if "?" in endpoint or "#" in endpoint:
        raise EndpointError(f"Endpoint URL must not have a query (?…) or fragment (#…), got "
                            f"{shown}: give the server's base URL or its /invocations URL.")
    if not _URL_CHARS.fullmatch(endpoint):
        raise EndpointError(f"Endpoint URL must be a plain URL (no spaces, backslashes or "
                            f"non-ASCII characters), got {shown}.")
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise EndpointError(f"Endpoint URL must start with http:// or https://, got {shown}.")
    if "@" in parts.netloc:
        raise EndpointError(f"Endpoint URL must not hold a user name or password (user@), got "
                            f"{shown}: the server's token is its only credential.")
    try:
        host, _ = parts.hostname, parts.port
    except ValueError:
        host = None
    if not host:
        raise EndpointError(f"Endpoint URL has no valid host and port, got {shown}.")
    path = parts.path.rstrip("/")
    if not path.endswith("/invocations"):
        path += "/invocations"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def read_body(response: requests.Response, limit: int, deadline: float) -> str:
    """The body of a streamed response, refused (EndpointError) past ``limit`` bytes or past
    ``deadline`` (time.monotonic(): requests' timeout bounds each read, not a body that
    trickles in)."""
    too_large = EndpointError(f"The endpoint's answer is larger than the app accepts "
                              f"({limit // 1_000_000} MB).", status=response.status_code)
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    # read1 (urllib3 >= 2.3) returns what has arrived, at most 64 KB decoded; iter_content
    # would wait for whole chunks, so a trickle would never reach the deadline check.
    read1 = getattr(response.raw, "read1", None)
    pieces = (iter(lambda: read1(64 * 1024, decode_content=True) or b"", b"") if read1
              else response.iter_content(chunk_size=64 * 1024))
    chunks, size = [], 0
    for chunk in pieces:
        size += len(chunk)
        if size > limit:
            raise too_large
        if time.monotonic() > deadline:
            raise EndpointError("The endpoint did not finish its answer in time.",
                                status=response.status_code)
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def request_params(k: int = 10, category: str | None = None, exclude_self: bool = True,
                   include_images: bool = True, look: bool = False) -> dict[str, Any]:
    """The ``params`` object; category is left out when no filter is wanted, and ``look``
    unless shop the look is wanted (a server that predates it never sees the parameter)."""
    params: dict[str, Any] = {"k": int(k), "exclude_self": bool(exclude_self),
                              "include_images": bool(include_images)}
    if category:
        params["category"] = category
    if look:
        params["look"] = True
    return params


def look_unsupported(error: EndpointError) -> bool:
    """Whether ``error`` is the endpoint saying its model was packaged without shop the look
    (HTTP 400, ``look.enabled`` in the message): the app then asks again without it."""
    return error.status == 400 and "look.enabled" in error.message


def encode_image(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_image(text: str | None) -> bytes | None:
    if not text:
        return None
    return base64.b64decode(text)


# What a visitor is told of an error status; the body itself goes to the app's log only.
_STATUS_MESSAGES = {401: "The endpoint refused the credentials",
                    403: "The endpoint refused the credentials",
                    404: "No endpoint at this URL",
                    413: "The request was too large for the endpoint",
                    429: "The endpoint is busy: try again shortly",
                    503: "The endpoint is busy or starting: try again shortly",
                    504: "The endpoint did not answer in time"}


def parse_response(status: int, body: str) -> list[Neighbour]:
    """Neighbours from a 200 answer; else EndpointError with a short message for the visitor.

    Of an error answer only a 400's JSON ``message`` is shown: the scoring server's verdict on
    the request, written for its caller. Any other body (an internal server's error page, a
    proxy's, one of an endpoint a visitor typed) is logged on the server, never shown.
    """
    import json

    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if status != 200:
        # A 400 is the visitor's request (shown to them); anything else is for the operator.
        _log.log(logging.INFO if status == 400 else logging.WARNING, "endpoint answered HTTP "
                 "%s: %r", status, (body or "")[:_MESSAGE_CHARS])
        code = data.get("error_code") if isinstance(data, dict) else None
        code = code if isinstance(code, str) else None
        message = data.get("message") if isinstance(data, dict) else None
        if status == 400 and isinstance(message, str) and message.strip():
            text = f"The endpoint rejected the request (HTTP 400): {message[:_MESSAGE_CHARS]}"
        elif 300 <= status < 400:
            text = (f"The endpoint answered with a redirect (HTTP {status}), which the app does "
                    "not follow: set the endpoint's final URL.")
        elif status in _STATUS_MESSAGES:
            text = f"{_STATUS_MESSAGES[status]} (HTTP {status})."
        elif 400 <= status < 500:
            text = f"The endpoint rejected the request (HTTP {status})."
        else:
            text = f"The endpoint failed (HTTP {status})."
        raise EndpointError(text, status=status, error_code=code)
    try:
        neighbours = [Neighbour(
            query=int(row.get("query", 0)), rank=int(row.get("rank", 0)),
            product_id=str(row.get("product_id")), category=str(row.get("category")),
            distance=float(row.get("distance", float("nan"))),
            image=decode_image(row.get("image")), garment=_garment(row.get("garment")),
            box=_box(row.get("box"))) for row in data["predictions"]]
    except (TypeError, KeyError, AttributeError, ValueError) as error:
        _log.warning("endpoint answered without valid predictions (%s): %r", error,
                     (body or "")[:_MESSAGE_CHARS])
        raise EndpointError("The endpoint answered without a 'predictions' list the app can "
                            "read.", status=status) from None
    # By query, then garment (in the answer's order: the detector's), then rank.
    groups: dict[tuple, int] = {}
    for n in neighbours:
        groups.setdefault((n.query, n.garment, n.box), len(groups))
    return sorted(neighbours, key=lambda n: (n.query, groups[n.query, n.garment, n.box], n.rank))


def _garment(value: object) -> str | None:
    """A record's ``garment``: a short string, or None (plain answers)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"garment is not a string: {type(value).__name__}")
    return value[:_GARMENT_CHARS]


def _box(value: object) -> tuple[float, float, float, float] | None:
    """A record's ``box``: four finite numbers, left < right and top < bottom; else None
    (null for product rows; a malformed box is not drawn, its lookalikes are still shown)."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    left, top, right, bottom = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (left, top, right, bottom)):
        return None
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def garment_rows(neighbours: Sequence[Neighbour]) -> list[GarmentRow]:
    """The neighbours by (query, garment, box), in the order :func:`parse_response` sorts
    them: one row of lookalikes per garment."""
    rows: dict[tuple, list[Neighbour]] = {}
    for n in neighbours:
        rows.setdefault((n.query, n.garment, n.box), []).append(n)
    return [GarmentRow(query, garment, box, tuple(found))
            for (query, garment, box), found in rows.items()]


def sniff_image_format(data: bytes) -> str | None:
    """JPEG, PNG or WEBP from the first bytes; None for anything else."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_upload(name: str, data: bytes, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
                 max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> str | None:
    """A plain-language problem with an uploaded file, or None if it can be sent.

    Only cheap checks, before anything is decoded: size, magic bytes, and from the header
    width x height (a small file can declare a huge image) and what decoding it would
    allocate (the endpoint refuses the same). Decoding is the endpoint's job, and its 400
    message is shown as is.
    """
    if not data:
        return f"{name} is empty."
    if len(data) > max_bytes:
        return f"{name} is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB."
    if sniff_image_format(data) is None:
        return f"{name} is not a JPEG, PNG or WebP image."
    header = read_header(data)
    # An unreadable header is the endpoint's to judge: its 400 says exactly what is wrong.
    if header is None:
        return None
    if header == DECOMPRESSION_BOMB:
        return f"{name} declares far more pixels than the limit of {max_pixels / 1e6:.0f} MP."
    width, height, cost = header
    if width * height > max_pixels:
        return (f"{name} is {width} x {height} pixels; the limit is "
                f"{max_pixels / 1e6:.0f} megapixels.")
    if cost > max_decode_bytes:
        return (f"{name} ({width} x {height} pixels) decodes at full size, about "
                f"{cost / 1e6:.0f} MB, over the limit of {max_decode_bytes / 1e6:.0f} MB: send "
                "it smaller, or as a baseline JPEG.")
    return None


# read_header's answer for headers Pillow refuses outright (over twice its own pixel limit).
DECOMPRESSION_BOMB = (-1, -1, -1)


def read_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, bytes its decoding allocates) from the image header, without decoding
    any pixel; None if unreadable. The cost is preprocessing.decode_cost's at the preview's
    size: what :func:`preview_png` allocates, and for PNG, WebP and progressive JPEG (full
    size whatever the target) what the endpoint refuses too."""
    import io
    import warnings

    from PIL import Image

    from lookalike.preprocessing import decode_cost

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we judge the size here
            with Image.open(io.BytesIO(data)) as image:
                return (*image.size, decode_cost(image, PREVIEW_SIDE))
    except Image.DecompressionBombError:
        return DECOMPRESSION_BOMB
    except Exception:  # noqa: BLE001 - any header the decoder cannot read
        return None


def preview_png(data: bytes, config: AppConfig) -> bytes:
    """A PREVIEW_SIDE PNG of an upload, as the model sees it (square, on white), decoded the
    way the endpoint decodes it: checked from the header first (bytes, pixels, decode cost),
    then a JPEG at a reduced scale. Raises preprocessing.ImageRejected."""
    import numpy as np

    from lookalike.preprocessing import array_to_png, checked_model_input

    pixels = checked_model_input(data, PREVIEW_SIDE, 3, config.max_upload_bytes,
                                 config.max_upload_pixels, UPLOAD_FORMATS,
                                 config.max_decode_bytes)
    return array_to_png(np.rint(pixels * 255).astype(np.uint8))


# Box colours of the look preview, one per garment in turn: dark enough for white labels.
_BOX_COLOURS = ((214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189),
                (255, 127, 14), (23, 190, 207))


def look_preview_png(data: bytes, boxes: Sequence[tuple[str, Sequence[float]]],
                     config: AppConfig, side: int = LOOK_PREVIEW_SIDE) -> bytes:
    """The upload as shown (upright, at most ``side`` px a side, never enlarged) with each
    ``(label, box)`` drawn on it: box in the upright original's pixels, label as plain ASCII
    text in Pillow's built-in font (no font of the machine, no emoji). Decoded with the
    endpoint's checks (bytes, pixels, decode cost). Raises preprocessing.ImageRejected."""
    import io

    from PIL import ImageDraw, ImageFont

    from lookalike.preprocessing import checked_picture, upright_size

    picture = checked_picture(data, side, config.max_upload_bytes, config.max_upload_pixels,
                              UPLOAD_FORMATS, config.max_decode_bytes).copy()
    width, height = upright_size(data)
    scale_x, scale_y = picture.width / width, picture.height / height
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    line = max(2, round(max(picture.size) / 150))
    for i, (label, box) in enumerate(boxes):
        colour = _BOX_COLOURS[i % len(_BOX_COLOURS)]
        left, top, right, bottom = box
        left = min(max(left * scale_x, 0), picture.width - 1)
        right = min(max(right * scale_x, 0), picture.width - 1)
        top = min(max(top * scale_y, 0), picture.height - 1)
        bottom = min(max(bottom * scale_y, 0), picture.height - 1)
        if right <= left or bottom <= top:
            continue
        draw.rectangle((left, top, right, bottom), outline=colour, width=line)
        text = re.sub(r"[^ -~]", "?", str(label))[:_GARMENT_CHARS]
        if text:
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            x, y = left, max(0, top - (y1 - y0) - 4)
            draw.rectangle((x, y, x + (x1 - x0) + 4, y + (y1 - y0) + 4), fill=colour)
            draw.text((x + 2 - x0, y + 2 - y0), text, fill=(255, 255, 255), font=font)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def digest(data: bytes) -> str:
    """A key for bytes (caches keyed on an upload's content)."""
    return hashlib.sha256(data).hexdigest()


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


def escape_markdown(text: object) -> str:
    """``text`` for a Markdown element (st.error, st.info, ...) shown as typed: every ASCII
    punctuation character backslash-escaped, as CommonMark allows, so a product id, category
    or server message makes no link, emphasis, colour or formula. Plain data is better shown
    with st.text, which parses nothing."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", str(text))

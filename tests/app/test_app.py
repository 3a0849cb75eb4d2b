"""The Streamlit demo app, driven with streamlit.testing.v1.AppTest against the real
``mlflow models serve`` of a tiny registered model (fixture ``served_model``), plus its REST
client's pure functions and the catalogue sample export it browses."""

from __future__ import annotations

import io
import re
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from streamlit_app import client as lc

# The app is a script of the repository, not of the wheel (tests/app/conftest.py puts the
# repository root on sys.path for `streamlit_app`).
APP = str(Path(lc.__file__).resolve().parent / "app.py")
SAMPLE_ROWS = 30  # what the app_sample fixture exports


# --------------------------------------------------------------------------- fixtures

@pytest.fixture()
def app_env(monkeypatch, served_model, app_sample):
    monkeypatch.setenv(lc.ENDPOINT_ENV, served_model)
    monkeypatch.setenv(lc.SAMPLE_ENV, str(app_sample[0]))
    monkeypatch.delenv(lc.TOKEN_ENV, raising=False)
    return served_model


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: nothing listens there


def run_app():
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(APP, default_timeout=120)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def results(app) -> list[tuple[str, str]]:
    """(text '#rank category · distance d', product_id) of each neighbour shown."""
    lines = [t.value for t in app.text]
    return [(text, lines[i + 1]) for i, text in enumerate(lines) if text.startswith("#")]


def query_label(app) -> str:
    lines = [t.value for t in app.text]
    # The query's label directly precedes the first result's text.
    first = next(i for i, text in enumerate(lines) if text.startswith("#"))
    return lines[first - 1]


def shown(elements) -> list[str]:
    """What Markdown elements (st.error, st.info, ...) display: their escapes undone."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in elements]


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


# --------------------------------------------------------------------------- client (pure)

def test_client_url_params_and_upload_checks():
    assert lc.invocations_url("http://h:1/") == "http://h:1/invocations"
    url = "https://ws.example/serving-endpoints/lookalike/invocations"
    assert lc.invocations_url(url) == url
    with pytest.raises(lc.EndpointError, match="No endpoint"):
        lc.invocations_url("  ")
    with pytest.raises(lc.EndpointError, match="http"):
        lc.invocations_url("127.0.0.1:5001")
    assert lc.request_params(k=3) == {"k": 3, "exclude_self": True, "include_images": True}
    # Shop the look: only sent when asked for, so a server that predates it is unaffected.
    assert lc.request_params(k=3, look=False) == lc.request_params(k=3)
    assert lc.request_params(k=3, look=True) == {"k": 3, "exclude_self": True,
                                                 "include_images": True, "look": True}
    assert lc.request_params(k=3, category="Bag")["category"] == "Bag"
    client = lc.LookalikeClient("http://h:1", token="secret")
    assert client.headers()["Authorization"] == "Bearer secret"
    assert "Authorization" not in lc.LookalikeClient("http://h:1").headers()

    pixels = np.full((20, 10, 3), 200, np.uint8)
    for fmt in ("PNG", "JPEG", "WEBP"):
        assert lc.sniff_image_format(png(pixels, fmt)) == fmt
        assert lc.check_upload(f"x.{fmt.lower()}", png(pixels, fmt)) is None
    assert "not a JPEG, PNG or WebP" in lc.check_upload("x.png", b"GIF89a....")
    assert "empty" in lc.check_upload("x.png", b"")
    assert "limit" in lc.check_upload("x.png", png(pixels), max_bytes=10)


def test_client_parses_predictions_and_server_errors():
    body = ('{"predictions": [{"query": 0, "rank": 2, "product_id": "b", "category": "Bag", '
            '"distance": 0.5}, {"query": 0, "rank": 1, "product_id": "a", "category": "Bag", '
            '"distance": 0.1, "image": "' + lc.encode_image(b"img") + '"}]}')
    first, second = lc.parse_response(200, body)
    assert (first.rank, first.product_id, first.image) == (1, "a", b"img")
    assert second.image is None and lc.caption(second) == "#2 Bag · distance 0.500"
    with pytest.raises(lc.EndpointError, match=r"rejected the request \(HTTP 400\): k must") as e:
        lc.parse_response(400, '{"error_code": "INVALID_PARAMETER_VALUE", "message": "k must"}')
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(lc.EndpointError, match="HTTP 502"):
        lc.parse_response(502, "<html>bad gateway</html>")
    with pytest.raises(lc.EndpointError, match="without a 'predictions'"):
        lc.parse_response(200, '{"oops": 1}')


def test_client_reports_a_closed_port_plainly():
    client = lc.LookalikeClient(f"http://127.0.0.1:{closed_port()}", timeout=5)
    with pytest.raises(lc.EndpointError, match="Cannot reach"):
        client.similar_to_product("x")


def test_sample_page_and_default_path(tmp_path):
    frame = pd.DataFrame({"product_id": [f"p{i}" for i in range(12)],
                          "category": ["A", "B", "C"] * 4, "title": None,
                          "thumbnail": [b"x"] * 12})
    page = lc.random_page(frame, 5, seed=1)
    assert len(page) == 5 and page.equals(lc.random_page(frame, 5, seed=1))
    assert set(lc.random_page(frame, 5, seed=1, category="B")["category"]) == {"B"}
    assert lc.default_sample_path({"LOOKALIKE_HOME": str(tmp_path)}) == \
        tmp_path / "app" / "catalogue_sample.parquet"
    assert lc.default_sample_path({lc.SAMPLE_ENV: "/x/s.parquet"}) == Path("/x/s.parquet")
    assert lc.read_catalogue_sample(tmp_path / "missing.parquet") is None


# --------------------------------------------------------------------------- sample export

def test_export_catalogue_sample(app_sample, packaged_model):
    path, result = app_sample
    assert result["path"] == str(path) and result["rows"] == SAMPLE_ROWS
    sample = lc.read_catalogue_sample(path)
    assert list(sample.columns)[:4] == ["product_id", "category", "title", "thumbnail"]
    assert sample["product_id"].is_unique
    assert set(sample["product_id"]) <= set(packaged_model.products["product_id"])
    # Spread over categories: the 10 Fashion-MNIST categories, 3 each.
    assert sample["category"].value_counts().max() <= 3
    with Image.open(io.BytesIO(sample["thumbnail"][0])) as image:
        assert image.format == "PNG" and max(image.size) <= 160


# --------------------------------------------------------------------------- the app

def test_app_opens_with_lookalikes_of_a_catalogue_product(app_env, app_sample):
    app = run_app()
    assert not app.error, [e.value for e in app.error]
    shown = results(app)
    assert len(shown) == 10  # default k
    query = lc.random_page(lc.read_catalogue_sample(app_sample[0]), 10, 0).iloc[0]
    assert query["product_id"] in query_label(app)
    ranks = [int(text.split()[0][1:]) for text, _ in shown]
    assert ranks == list(range(1, 11))
    distances = [float(text.rsplit(" ", 1)[1]) for text, _ in shown]
    assert distances == sorted(distances)
    assert query["product_id"] not in {pid for _, pid in shown}  # exclude_self


def test_more_like_this_button(app_env, app_sample, packaged_model):
    app = run_app()
    before = [pid for _, pid in results(app)]
    buttons = [b for b in app.button if b.key and b.key.startswith("more-")]
    assert len(buttons) == 10  # one per product of the browse page
    target = buttons[3].key.removeprefix("more-")
    buttons[3].click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert target in query_label(app)
    after = [pid for _, pid in results(app)]
    assert len(after) == 10 and target not in after and after != before
    catalogue = dict(zip(packaged_model.products["product_id"],
                         packaged_model.products["category"]))
    for text, pid in results(app):
        assert catalogue[pid] in text  # category shown is the product's

    # And "more like this" on a result itself.
    again = next(b for b in app.button if b.key == f"again-{after[0]}")
    again.click().run()
    assert not app.exception and not app.error
    assert after[0] in query_label(app)


def test_category_filter_and_k(app_env):
    app = run_app()
    app.slider(key="k").set_value(3)
    app.selectbox(key="category").set_value("Sneaker")
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    shown = results(app)
    assert len(shown) == 3
    assert all(" Sneaker · " in text for text, _ in shown)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_upload_a_photo(app_env, packaged_model, fmt):
    row = packaged_model.products.iloc[7]
    with Image.open(io.BytesIO(row["image"])) as image:
        pixels = np.asarray(image.convert("RGB").resize((84, 84)))
    # PNG: the catalogue's own bytes; JPEG/WebP: an upscaled colour "photo" of it.
    data = bytes(row["image"]) if fmt == "PNG" else png(pixels, fmt)
    app = run_app()
    app.file_uploader(key="upload").set_value((f"photo.{fmt.lower()}", data,
                                               f"image/{fmt.lower()}"))
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert f"Your photo: photo.{fmt.lower()}" in query_label(app)
    shown = results(app)
    assert len(shown) == 10
    if fmt == "PNG":
        # The catalogue image itself finds that product first, at distance ~0.
        assert shown[0][1] == row["product_id"]
        assert float(shown[0][0].rsplit(" ", 1)[1]) < 0.05


def test_rejected_upload_shows_the_servers_message(app_env):
    app = run_app()
    broken = png(np.zeros((30, 30), np.uint8))[:40]  # PNG signature, truncated body
    app.file_uploader(key="upload").set_value(("broken.png", broken, "image/png"))
    app.run()
    assert not app.exception
    errors = shown(app.error)
    assert len(errors) == 1 and "rejected the request (HTTP 400)" in errors[0], errors
    assert not results(app)


def test_unknown_product_id_shows_the_servers_message(app_env):
    app = run_app()
    app.text_input(key="product_id_input").input("no-such-product-42")
    app.button(key="find_by_id").click().run()
    errors = shown(app.error)
    assert len(errors) == 1 and "HTTP 400" in errors[0] and "no-such-product-42" in errors[0]


def test_endpoint_down_is_said_plainly(monkeypatch, app_sample):
    port = closed_port()
    monkeypatch.setenv(lc.ENDPOINT_ENV, f"http://127.0.0.1:{port}")
    monkeypatch.setenv(lc.SAMPLE_ENV, str(app_sample[0]))
    app = run_app()
    errors = shown(app.error)
    assert len(errors) == 1 and "Cannot reach" in errors[0] and str(port) in errors[0]
    assert not results(app)
    # The browse page still works without the endpoint.
    assert len([b for b in app.button if b.key and b.key.startswith("more-")]) == 10


def test_no_sample_still_allows_upload(monkeypatch, served_model, tmp_path, packaged_model):
    monkeypatch.setenv(lc.ENDPOINT_ENV, served_model)
    monkeypatch.setenv(lc.SAMPLE_ENV, str(tmp_path / "none.parquet"))
    app = run_app()
    assert any("No catalogue sample" in i.value for i in app.info)
    app.file_uploader(key="upload").set_value(
        ("p.png", bytes(packaged_model.products.iloc[0]["image"]), "image/png"))
    app.run()
    assert not app.error and len(results(app)) == 10


# --------------------------------------------------------------------------- safety rules

TOKEN = "dapi-test-secret-7f3a9c"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a few hundred bytes, pixels unreadable)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(
        b"\x00" * 64)) + chunk(b"IEND", b"")


def test_upload_pixels_are_checked_from_the_header_before_decoding():
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 1000
    assert "far more pixels" in lc.check_upload("bomb.png", bomb)
    wide = png_header_only(6000, 5000)
    assert "6000 x 5000 pixels" in lc.check_upload("wide.png", wide, max_pixels=25_000_000)
    assert lc.check_upload("ok.png", png(np.zeros((40, 30), np.uint8)), max_pixels=1200) is None


def texts(app) -> list[str]:
    """Every string the page holds: labels, values, bodies, captions (main and sidebar)."""
    found = []

    def walk(node):
        for name in ("value", "label", "body", "placeholder", "help"):
            value = getattr(node, name, None) if not callable(getattr(node, name, None)) else None
            if isinstance(value, str):
                found.append(value)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(app._tree)
    return found


def test_token_stays_on_the_server(app_env, monkeypatch):
    monkeypatch.setenv(lc.TOKEN_ENV, TOKEN)
    app = run_app()
    assert not [t for t in texts(app) if TOKEN in t]
    assert not [w for w in app.text_input if w.key in ("token", "endpoint")]
    assert any("Bearer token: set on the server" in c.value for c in app.sidebar.caption)
    assert len(results(app)) == 10  # the configured endpoint still answers


class _Loopback:
    """A threaded HTTP server on 127.0.0.1 for one handler class; ``close()`` stops it."""

    def _start(self, handler) -> None:
        import http.server
        import threading

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class RecordingEndpoint(_Loopback):
    """A loopback HTTP endpoint that records each request (method, path, Authorization header;
    its body in ``bodies``) and answers each with ``status``, ``body`` and ``headers``. A
    callable ``body`` writes the answer's body itself, to the socket file, without a
    Content-Length (ended by closing)."""

    def __init__(self, status: int = 200, body=b'{"predictions": []}', headers=None):
        import http.server

        seen = self.requests = []
        bodies = self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                seen.append((self.command, self.path, self.headers.get("Authorization")))
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if callable(body):
                    self.end_headers()
                    body(self.wfile)
                    return
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self._start(Handler)

    @property
    def authorizations(self) -> list[str | None]:
        return [auth for _, _, auth in self.requests]


def test_endpoint_is_fixed_unless_allowed_and_the_token_never_follows_an_edit(
        monkeypatch, app_sample):
    configured, elsewhere = RecordingEndpoint(), RecordingEndpoint()
    try:
        monkeypatch.setenv(lc.SAMPLE_ENV, str(app_sample[0]))
        monkeypatch.setenv(lc.TOKEN_ENV, TOKEN)
        monkeypatch.setenv(lc.ENDPOINT_ENV, configured.url)
        monkeypatch.delenv(lc.ALLOW_ENDPOINT_EDIT_ENV, raising=False)
        app = run_app()
        assert not [w for w in app.text_input if w.key == "endpoint"]
        assert configured.authorizations == [f"Bearer {TOKEN}"]

        monkeypatch.setenv(lc.ALLOW_ENDPOINT_EDIT_ENV, "1")
        app = run_app()
        field = next(w for w in app.text_input if w.key == "endpoint")
        assert field.value == configured.url
        field.input(elsewhere.url).run()
        assert elsewhere.authorizations == [None]  # the edited endpoint got no token
        assert not [t for t in texts(app) if TOKEN in t]
    finally:
        configured.close()
        elsewhere.close()


class WorkspaceStandIn(_Loopback):
    """A loopback stand-in of a workspace for the app as a Databricks App: the serving
    endpoint ``shop`` (forwarded to the real ``mlflow models serve``) and the Files API of
    one Volume file. Records each request's path and Authorization header. Not covered: the
    OAuth exchange of an app's service principal (the SDK authenticates with a token here)."""

    def __init__(self, served_model: str, volume_path: str, sample: bytes):
        import http.server
        import urllib.request

        seen = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status, body, kind="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                seen.append((self.path, self.headers.get("Authorization")))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/serving-endpoints/shop/invocations":
                    return self._answer(404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}')
                request = urllib.request.Request(f"{served_model}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    self._answer(response.status, response.read())

            def do_GET(self):
                seen.append((self.path, self.headers.get("Authorization")))
                if self.path == f"/api/2.0/fs/files{volume_path}":
                    return self._answer(200, sample, "application/octet-stream")
                self._answer(404, b'{"error_code": "NOT_FOUND", "message": "no such file"}')

            def log_message(self, *args):
                pass

        self._start(Handler)


def test_as_a_databricks_app_it_queries_the_serving_endpoint_with_workspace_credentials(
        monkeypatch, served_model, app_sample, tmp_path):
    """conf/bundle/app.yml: the endpoint by name, the sample from the Volume through the
    Files API, credentials from the workspace identity (never a page element)."""
    volume_path = "/Volumes/shop/lookalike/lookalike/app/catalogue_sample.parquet"
    workspace = WorkspaceStandIn(served_model, volume_path, Path(app_sample[0]).read_bytes())
    try:
        for name in (lc.ENDPOINT_ENV, lc.TOKEN_ENV, "DATABRICKS_CONFIG_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))        # no ~/.databrickscfg of the machine
        monkeypatch.setenv(lc.SERVING_ENDPOINT_ENV, "shop")
        monkeypatch.setenv("DATABRICKS_HOST", workspace.url)
        monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
        monkeypatch.setenv(lc.SAMPLE_ENV, volume_path)
        config = lc.AppConfig.from_environ()
        assert config.endpoint == f"{workspace.url}/serving-endpoints/shop/invocations"
        assert config.workspace_for(config.endpoint)
        assert not config.workspace_for("http://127.0.0.1:1/invocations")
        app = run_app()
        assert not app.error, [e.value for e in app.error]
        assert len(results(app)) == 10
        assert not [t for t in texts(app) if TOKEN in t]
        paths = {path for path, _ in workspace.requests}
        assert {f"/api/2.0/fs/files{volume_path}", "/serving-endpoints/shop/invocations"} <= paths
        # (The SDK also asks for host metadata and a presigned download URL first: 404 here.)
        assert {auth for path, auth in workspace.requests
                if path.startswith(("/api/", "/serving-endpoints/"))} == {f"Bearer {TOKEN}"}
    finally:
        workspace.close()


def test_as_a_databricks_app_without_a_host_it_says_what_is_missing():
    with pytest.raises(lc.EndpointError, match="DATABRICKS_HOST is not set"):
        lc.AppConfig.from_environ({lc.SERVING_ENDPOINT_ENV: "shop"})
    config = lc.AppConfig.from_environ({lc.SERVING_ENDPOINT_ENV: "shop",
                                        "DATABRICKS_HOST": "adb-1.azuredatabricks.net"})
    assert config.endpoint == "https://adb-1.azuredatabricks.net/serving-endpoints/shop/invocations"


# --------------------------------------------------------------------------- untrusted answers

def test_endpoint_url_is_a_plain_http_url_and_always_gets_invocations():
    assert lc.invocations_url("http://h:1/base/") == "http://h:1/base/invocations"
    assert lc.invocations_url("HTTPS://h/x/invocations/") == "https://h/x/invocations"
    # A "#" or "?x=" would swallow the appended /invocations; userinfo would be credentials.
    for url, problem in [("http://h:1/#", "fragment"), ("http://h:1/?x=", "query"),
                         ("http://h:1/invocations?k=1", "query"), ("http://u:p@h:1", "password"),
                         ("http://u@h:1", "user"), ("file:///etc/passwd", "http"),
                         ("http://h:1/a b", "plain URL"), ("http://h\\@e/", "plain URL"),
                         ("http://h:99999", "host and port")]:
        with pytest.raises(lc.EndpointError, match=problem):
            lc.invocations_url(url)


def edit_endpoint(monkeypatch, app_sample, configured: str, edited: str):
    """The app with a visitor-editable endpoint, after the visitor typed ``edited``."""
    monkeypatch.setenv(lc.SAMPLE_ENV, str(app_sample[0]))
    monkeypatch.setenv(lc.ENDPOINT_ENV, configured)
    monkeypatch.setenv(lc.ALLOW_ENDPOINT_EDIT_ENV, "1")
    monkeypatch.delenv(lc.TOKEN_ENV, raising=False)
    app = run_app()
    next(w for w in app.text_input if w.key == "endpoint").input(edited).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


@pytest.mark.parametrize("suffix", ["/#", "/?x="])
def test_an_edited_endpoint_with_a_query_or_fragment_is_refused(monkeypatch, app_sample, suffix):
    endpoint = RecordingEndpoint()
    try:
        app = edit_endpoint(monkeypatch, app_sample, endpoint.url, endpoint.url + suffix)
        errors = shown(app.error)
        assert len(errors) == 1 and "query (?…) or fragment (#…)" in errors[0], errors
        # Only the configured URL was asked (the first run), at /invocations.
        assert endpoint.requests == [("POST", "/invocations", None)]
    finally:
        endpoint.close()


def test_redirects_are_reported_not_followed(monkeypatch, app_sample):
    target = RecordingEndpoint()
    redirect = RecordingEndpoint(302, b"", {"Location": f"{target.url}/invocations"})
    try:
        monkeypatch.setenv(lc.SAMPLE_ENV, str(app_sample[0]))
        monkeypatch.setenv(lc.ENDPOINT_ENV, redirect.url)
        monkeypatch.setenv(lc.TOKEN_ENV, TOKEN)
        app = run_app()
        errors = shown(app.error)
        assert len(errors) == 1 and "redirect (HTTP 302)" in errors[0], errors
        assert redirect.requests == [("POST", "/invocations", f"Bearer {TOKEN}")]
        assert target.requests == []
    finally:
        redirect.close()
        target.close()


def test_error_bodies_stay_on_the_server_except_a_400s_message(monkeypatch, app_sample, caplog):
    secret = "Traceback (most recent call last): internal.host:8443 SECRET-STACK"
    cases = [(500, secret.encode(), "The endpoint failed (HTTP 500)."),
             (403, b'{"error_code": "PERMISSION_DENIED", "message": "' + secret.encode() + b'"}',
              "The endpoint refused the credentials (HTTP 403)."),
             (404, b"<html>" + secret.encode() + b"</html>", "No endpoint at this URL (HTTP 404)."),
             (400, b"<html>" + secret.encode() + b"</html>",
              "The endpoint rejected the request (HTTP 400)."),
             (400, b'{"error_code": "BAD_REQUEST", "message": "k must be **<= 100**"}',
              "The endpoint rejected the request (HTTP 400): k must be **<= 100**")]
    monkeypatch.setenv(lc.SAMPLE_ENV, str(app_sample[0]))
    for status, body, message in cases:
        endpoint = RecordingEndpoint(status, body)
        try:
            monkeypatch.setenv(lc.ENDPOINT_ENV, endpoint.url)
            with caplog.at_level("INFO", logger=lc.__name__):
                app = run_app()
            assert shown(app.error) == [message]
            assert not [t for t in texts(app) if "SECRET-STACK" in re.sub(r"\\(.)", r"\1", t)]
            assert "SECRET-STACK" in caplog.text or b"SECRET" not in body  # logged instead
            caplog.clear()
        finally:
            endpoint.close()


def test_answers_are_read_up_to_a_bound():
    """MAX_RESPONSE_BYTES: a longer body, declared or streamed, is an error, not memory."""
    def oversized_json(out):
        out.write(b'{"predictions": [], "padding": "')
        chunk = b"x" * 1_000_000
        for _ in range(lc.MAX_RESPONSE_BYTES // len(chunk) + 2):
            out.write(chunk)
        out.write(b'"}')

    streamed = RecordingEndpoint(200, oversized_json)
    declared = RecordingEndpoint(200, b'{"predictions": []}',
                                 {"Content-Length": str(10 ** 12)})
    try:
        for endpoint in (streamed, declared):
            with pytest.raises(lc.EndpointError, match="larger than the app accepts"):
                lc.LookalikeClient(endpoint.url, timeout=20).similar_to_product("x")
        small = lc.LookalikeClient(streamed.url, timeout=20, max_response_bytes=1000)
        with pytest.raises(lc.EndpointError, match="larger than the app accepts"):
            small.similar_to_product("x")
    finally:
        streamed.close()
        declared.close()


def test_an_answer_that_trickles_in_is_cut_at_the_timeout():
    import time

    def trickle(out):
        out.write(b'{"predictions": [')
        for _ in range(40):
            out.write(b" ")
            out.flush()
            time.sleep(0.1)
        out.write(b"]}")

    endpoint = RecordingEndpoint(200, trickle)
    try:
        started = time.monotonic()
        with pytest.raises(lc.EndpointError, match="did not finish its answer in time"):
            lc.LookalikeClient(endpoint.url, timeout=1).similar_to_product("x")
        assert time.monotonic() - started < 3.5  # the trickle itself takes 4 s
    finally:
        endpoint.close()


def test_netrc_credentials_are_never_sent(monkeypatch, app_sample, tmp_path):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login visitor password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    configured, edited = RecordingEndpoint(), RecordingEndpoint()
    try:
        app = edit_endpoint(monkeypatch, app_sample, configured.url, edited.url)
        assert not app.error, [e.value for e in app.error]
        assert configured.authorizations == [None] and edited.authorizations == [None]
    finally:
        configured.close()
        edited.close()


def test_clients_are_cached_within_a_bound(monkeypatch, app_sample):
    import gc

    import streamlit as st

    st.cache_resource.clear()
    port = closed_port()
    app = edit_endpoint(monkeypatch, app_sample, f"http://127.0.0.1:{port}/e0",
                        f"http://127.0.0.1:{port}/e1")
    for i in range(2, 20):
        next(w for w in app.text_input if w.key == "endpoint").input(
            f"http://127.0.0.1:{port}/e{i}").run()
        assert "Cannot reach" in shown(app.error)[0]
    gc.collect()
    clients = [o for o in gc.get_objects() if isinstance(o, lc.LookalikeClient)]
    assert 1 <= len(clients) <= 8, len(clients)


def write_sample(path: Path, rows: list[tuple[str, str]]) -> Path:
    thumbnail = png(np.full((16, 16), 128, np.uint8))
    pd.DataFrame({"product_id": [p for p, _ in rows], "category": [c for _, c in rows],
                  "title": None, "thumbnail": [thumbnail] * len(rows)}).to_parquet(path)
    return path


def test_product_ids_and_categories_are_plain_text(monkeypatch, tmp_path):
    """Ids and categories are data: shown as typed, never as Markdown (links, emphasis,
    Streamlit's colour and icon directives, formulas)."""
    import json

    rows = [("**bold**", ":red[Bag]"), ("[a](http://evil.example)", "$x^2$"),
            ("<b>x</b>", "Sneaker_")]
    answer = {"predictions": [{"query": 0, "rank": i + 1, "product_id": pid, "category": cat,
                               "distance": 0.1 * i} for i, (pid, cat) in enumerate(rows)]}
    endpoint = RecordingEndpoint(200, json.dumps(answer).encode())
    try:
        monkeypatch.setenv(lc.SAMPLE_ENV, str(write_sample(tmp_path / "s.parquet", rows)))
        monkeypatch.setenv(lc.ENDPOINT_ENV, endpoint.url)
        app = run_app()
        assert not app.error, [e.value for e in app.error]
        lines = [t.value for t in app.text]
        for pid, category in rows:
            assert f"{category} · {pid}" in lines  # the browse grid
        neighbours = results(app)
        assert [pid for _, pid in neighbours] == [pid for pid, _ in rows]
        assert [text.split(" · ")[0] for text, _ in neighbours] == [
            f"#{rank} {category}" for rank, (_, category) in enumerate(rows, start=1)]
        markdown = [e.value for e in (*app.caption, *app.markdown, *app.info, *app.warning)]
        for pid, category in rows:
            assert not [m for m in markdown if pid in m or category in m], markdown
        # Filtered by a Markdown-looking category: the count's line shows it escaped.
        app.selectbox(key="category").set_value(":red[Bag]").run()
        assert "in :red[Bag]" in shown(app.markdown)[-1]
    finally:
        endpoint.close()


# --------------------------------------------------------------------------- upload bounds

def png_header_rgb(width: int, height: int) -> bytes:
    """As png_header_only, for an RGB image (decodes at 4 bytes a pixel)."""
    import struct
    import zlib

    data = png_header_only(width, height)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    ihdr = b"IHDR" + header
    return (data[:8] + struct.pack(">I", 13) + ihdr
            + struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF) + data[33:])


def test_uploads_that_decode_too_expensively_are_refused_from_the_header(app_env):
    costly = png_header_rgb(4000, 4000)  # 16 MP: under the pixel limit, 64 MB to decode
    problem = lc.check_upload("big.png", costly)
    assert problem and "decodes at full size, about 64 MB, over the limit of 50 MB" in problem
    assert lc.check_upload("big.png", costly, max_decode_bytes=100_000_000) is None
    app = run_app()
    app.file_uploader(key="upload").set_value(("big.png", costly, "image/png"))
    app.run()
    errors = shown(app.error)
    assert len(errors) == 1 and "big.png (4000 x 4000 pixels) decodes at full size" in errors[0]


def test_upload_preview_is_bounded_and_made_once_per_upload(app_env, monkeypatch):
    from lookalike.preprocessing import ImageRejected

    config = lc.AppConfig.from_environ({})
    # A 4000 x 3000 baseline JPEG previews at a reduced scale; a progressive one that would
    # decode at full size over the limit is refused before decoding.
    ramp = np.linspace(0, 255, 4000, dtype=np.uint8)
    photo = Image.fromarray(np.stack([np.tile(ramp, (3000, 1))] * 3, axis=-1))
    for progressive in (False, True):
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=60, progressive=progressive)
        if progressive:
            small = lc.AppConfig.from_environ({lc.MAX_DECODE_BYTES_ENV: "20000000"})
            with pytest.raises(ImageRejected, match="too_costly"):
                lc.preview_png(buffer.getvalue(), small)
        else:
            with Image.open(io.BytesIO(lc.preview_png(buffer.getvalue(), config))) as preview:
                assert preview.size == (lc.PREVIEW_SIDE, lc.PREVIEW_SIDE)

    calls = []
    original = lc.preview_png
    monkeypatch.setattr(lc, "preview_png", lambda *a: calls.append(1) or original(*a))
    upload = png(np.random.default_rng(11).integers(0, 255, (60, 40, 3), np.uint8))
    app = run_app()
    app.file_uploader(key="upload").set_value(("fresh.png", upload, "image/png"))
    app.run()
    assert not app.error, [e.value for e in app.error]
    for _ in range(2):  # reruns (another k) reuse the preview
        app.slider(key="k").set_value(app.slider(key="k").value + 1).run()
    assert len(calls) == 1
    assert "(no preview)" not in [c.value for c in app.caption]


def test_streamlit_refuses_uploads_over_the_apps_limit_before_the_app(app_env):
    """The upload widget, `make app` and the Databricks App command carry the app's limit
    (Streamlit's own default is 200 MB); `lookalike demo` passes upload_size_mb too."""
    import os
    import shlex
    import subprocess

    import yaml

    from lookalike.app_env import upload_size_mb

    assert upload_size_mb(lc.DEFAULT_MAX_UPLOAD_BYTES) == 10
    assert upload_size_mb(10_500_000) == 11
    app = run_app()
    assert app.file_uploader(key="upload").proto.max_upload_size_mb == 10

    root = Path(APP).parents[1]
    recipe = subprocess.run(["make", "-n", "--no-print-directory", "app", "PY=echo"],
                            cwd=root, check=True, capture_output=True, text=True).stdout
    line = recipe[recipe.index("echo -m streamlit"):]
    for limit in (None, 10_500_000, 20_000_000):
        env = {k: v for k, v in os.environ.items() if k != lc.MAX_UPLOAD_BYTES_ENV}
        if limit:
            env[lc.MAX_UPLOAD_BYTES_ENV] = str(limit)
        argv = shlex.split(subprocess.run(["sh", "-c", line], env=env, check=True,
                                          capture_output=True, text=True).stdout)
        flag = argv.index("--server.maxUploadSize")
        assert argv[flag + 1] == str(upload_size_mb(limit or lc.DEFAULT_MAX_UPLOAD_BYTES))

    bundle_app = yaml.safe_load((root / "conf" / "bundle" / "app.yml").read_text())
    command = bundle_app["resources"]["apps"]["lookalike_app"]["config"]["command"]
    flag = command.index("--server.maxUploadSize")
    assert command[flag + 1] == str(upload_size_mb(lc.DEFAULT_MAX_UPLOAD_BYTES))


# --------------------------------------------------------------------------- shop the look

TOP_BOX, BOTTOM_BOX, SHOES_BOX = [10, 8, 90, 60], [20, 70, 110, 115], [120, 100, 158, 119]


def look_answer() -> bytes:
    """A canned shop-the-look answer of one photo: a top, a bottom and shoes, 3 lookalikes
    each, interleaved (the client groups them by garment, in the order they first appear)."""
    import json

    thumbnail = lc.encode_image(png(np.full((16, 16), 90, np.uint8)))
    records = []
    for rank in (1, 2, 3):
        for garment, box, category in (("top", TOP_BOX, "Shirt"),
                                       ("bottom", BOTTOM_BOX, "Trouser"),
                                       ("shoes", SHOES_BOX, "Sneaker")):
            records.append({"query": 0, "rank": rank, "product_id": f"{garment}-{rank}",
                            "category": category, "title": None, "distance": 0.1 * rank,
                            "group_id": f"{garment}-{rank}", "image": thumbnail,
                            "garment": garment, "box": box})
    return json.dumps({"predictions": records}).encode()


def test_client_reads_and_groups_a_look_answer():
    import json

    endpoint = RecordingEndpoint(200, look_answer())
    try:
        client = lc.LookalikeClient(endpoint.url, timeout=20)
        neighbours = client.similar_to_image(b"photo", k=3, look=True)
        plain = client.similar_to_image(b"photo", k=3)
        sent = [json.loads(body)["params"] for body in endpoint.bodies]
    finally:
        endpoint.close()
    assert sent[0]["look"] is True and "look" not in sent[1]  # omitted unless asked for
    assert [(n.garment, n.rank) for n in neighbours] == [
        (g, r) for g in ("top", "bottom", "shoes") for r in (1, 2, 3)]
    rows = lc.garment_rows(neighbours)
    assert [(r.garment, r.box, [n.product_id for n in r.neighbours]) for r in rows] == [
        ("top", tuple(TOP_BOX), ["top-1", "top-2", "top-3"]),
        ("bottom", tuple(BOTTOM_BOX), ["bottom-1", "bottom-2", "bottom-3"]),
        ("shoes", tuple(SHOES_BOX), ["shoes-1", "shoes-2", "shoes-3"])]
    assert plain == neighbours  # (the stand-in answers both alike)
    # A plain answer: no garment, one row.
    plain_rows = lc.garment_rows(lc.parse_response(
        200, '{"predictions": [{"query": 0, "rank": 1, "product_id": "a", "category": "Bag", '
             '"distance": 0.1}]}'))
    assert [(r.garment, r.box) for r in plain_rows] == [(None, None)]
    # A malformed box is not drawn (None); a non-string garment is no answer the app reads.
    for box in ([1, 2, 3], [5, 5, 1, 9], ["0", 0, 1, 1], [0, 0, float("inf"), 1], None):
        record = {"query": 0, "rank": 1, "product_id": "a", "category": "Bag",
                  "distance": 0.1, "garment": "top", "box": box}
        answer = json.dumps({"predictions": [record]})
        assert lc.parse_response(200, answer)[0].box is None
    with pytest.raises(lc.EndpointError, match="without a 'predictions'"):
        lc.parse_response(200, '{"predictions": [{"product_id": "a", "garment": ["top"]}]}')
    # The 400 of a model packaged without look, and any other 400.
    unsupported = ('{"error_code": "INVALID_PARAMETER_VALUE", "message": "look=true needs a '
                   'model packaged with look.enabled: true"}')
    with pytest.raises(lc.EndpointError) as error:
        lc.parse_response(400, unsupported)
    assert lc.look_unsupported(error.value)
    with pytest.raises(lc.EndpointError) as error:
        lc.parse_response(400, '{"message": "k must be <= 100"}')
    assert not lc.look_unsupported(error.value)


def boxed_preview(app) -> np.ndarray | None:
    """The pixels of the app's shop-the-look preview (the one image at the upload's size)."""
    import base64

    for element in app.get("image"):
        url = element.proto.imgs[0].url
        data = base64.b64decode(url.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as image:
            if image.size == (160, 120):
                return np.asarray(image.convert("RGB"))
    return None


def test_shop_the_look_shows_the_boxes_and_one_row_per_garment(monkeypatch, tmp_path):
    import json

    endpoint = RecordingEndpoint(200, look_answer())
    try:
        monkeypatch.setenv(lc.SAMPLE_ENV, str(tmp_path / "none.parquet"))
        monkeypatch.setenv(lc.ENDPOINT_ENV, endpoint.url)
        monkeypatch.delenv(lc.TOKEN_ENV, raising=False)
        app = run_app()
        assert not app.checkbox(key="look").value  # off by default
        photo = png(np.full((120, 160, 3), 128, np.uint8))
        app.file_uploader(key="upload").set_value(("look.png", photo, "image/png"))
        app.checkbox(key="look").check()
        app.run()
        assert not app.exception and not app.error, [e.value for e in app.error]
        assert json.loads(endpoint.bodies[-1])["params"]["look"] is True
    finally:
        endpoint.close()
    assert shown(app.subheader)[-3:] == ["Top", "Bottom", "Shoes"]
    assert [pid for _, pid in results(app)] == [
        f"{g}-{r}" for g in ("top", "bottom", "shoes") for r in (1, 2, 3)]
    assert {b.key for b in app.button if b.key and b.key.startswith("again-")} == {
        f"again-{i}-{g}-{r}" for i, g in enumerate(("top", "bottom", "shoes"))
        for r in (1, 2, 3)}
    assert "Your photo: look.png" in [t.value for t in app.text]
    # The photo as uploaded (upright, its own size), each garment's box drawn on a copy.
    pixels = boxed_preview(app)
    assert pixels is not None
    top_colour, bottom_colour = pixels[30, TOP_BOX[0]], pixels[95, BOTTOM_BOX[0]]
    shoes_colour = pixels[112, SHOES_BOX[0]]
    colours = {tuple(c) for c in (top_colour, bottom_colour, shoes_colour)}
    assert len(colours) == 3 and (128, 128, 128) not in colours
    assert (pixels[30, TOP_BOX[2]] == top_colour).all()  # right edge
    assert (pixels[BOTTOM_BOX[3], 100] == bottom_colour).all()  # bottom edge
    assert tuple(pixels[35, 50]) == (128, 128, 128)  # inside a box: the photo itself
    assert tuple(pixels[5, 150]) == (128, 128, 128)  # outside every box

    # Unchecked: the plain request again (no look), the plain grid.
    endpoint = RecordingEndpoint(200, b'{"predictions": [{"query": 0, "rank": 1, '
                                      b'"product_id": "a", "category": "Bag", "distance": 0.1}]}')
    try:
        monkeypatch.setenv(lc.ENDPOINT_ENV, endpoint.url)
        app = run_app()
        app.file_uploader(key="upload").set_value(("look.png", photo, "image/png"))
        app.run()
        assert "look" not in json.loads(endpoint.bodies[-1])["params"]
        assert [pid for _, pid in results(app)] == ["a"] and boxed_preview(app) is None
    finally:
        endpoint.close()


def test_shop_the_look_falls_back_when_the_model_was_packaged_without_it(app_env,
                                                                         packaged_model):
    """The served test model has no look.enabled: its 400 becomes a note, then the plain
    answer."""
    row = packaged_model.products.iloc[7]
    app = run_app()
    app.file_uploader(key="upload").set_value(("photo.png", bytes(row["image"]), "image/png"))
    app.checkbox(key="look").check()
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    notes = shown(app.info)
    assert len(notes) == 1 and "packaged without shop the look" in notes[0], notes
    shown_ = results(app)
    assert len(shown_) == 10 and shown_[0][1] == row["product_id"]
    assert "Your photo: photo.png" in query_label(app)
    # Reruns say it again without asking the endpoint for the look (remembered).
    app.slider(key="k").set_value(3).run()
    assert not app.error and len(results(app)) == 3
    assert shown(app.info) == notes


def test_app_sources_hold_no_glyph_that_needs_an_emoji_font():
    """Issue 22: the page's own strings are plain text (tests/app/test_browser.py checks the
    rendered page in Chromium; this catches it where Chromium is not installed)."""
    emoji_like = re.compile("[\u2190-\u2bff\U0001f000-\U0001faff\ufe0f\u200d]")
    for path in Path(APP).parent.glob("*.py"):
        found = [(n, line.strip()) for n, line in enumerate(
            path.read_text(encoding="utf-8").splitlines(), start=1) if emoji_like.search(line)]
        assert not found, (path.name, found)

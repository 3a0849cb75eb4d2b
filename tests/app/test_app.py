"""The Streamlit demo app, driven with streamlit.testing.v1.AppTest against the real
``mlflow models serve`` of a tiny registered model (fixture ``served_model``), plus its REST
client's pure functions and the catalogue sample export it browses."""

from __future__ import annotations

import io
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
    """(caption '#rank category · distance d', product_id) of each neighbour shown."""
    captions = [c.value for c in app.caption]
    return [(text, captions[i + 1]) for i, text in enumerate(captions) if text.startswith("#")]


def query_label(app) -> str:
    captions = [c.value for c in app.caption]
    # The query caption directly precedes the first result caption.
    first = next(i for i, text in enumerate(captions) if text.startswith("#"))
    return captions[first - 1]


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
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "rejected the request (HTTP 400)" in errors[0], errors
    assert not results(app)


def test_unknown_product_id_shows_the_servers_message(app_env):
    app = run_app()
    app.text_input(key="product_id_input").input("no-such-product-42")
    app.button(key="find_by_id").click().run()
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "HTTP 400" in errors[0] and "no-such-product-42" in errors[0]


def test_endpoint_down_is_said_plainly(monkeypatch, app_sample):
    port = closed_port()
    monkeypatch.setenv(lc.ENDPOINT_ENV, f"http://127.0.0.1:{port}")
    monkeypatch.setenv(lc.SAMPLE_ENV, str(app_sample[0]))
    app = run_app()
    errors = [e.value for e in app.error]
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
    """A loopback HTTP endpoint that records each request's Authorization header."""

    def __init__(self):
        import http.server

        seen = self.authorizations = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                seen.append(self.headers.get("Authorization"))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = b'{"predictions": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._start(Handler)


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

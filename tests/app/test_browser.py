"""Real-browser checks: `streamlit run` of the demo app against the real served model,
loaded in Debian's headless Chromium, which must show the default query's lookalikes, never
hold the token, and show no glyph that needs an emoji font (with a screenshot to look at).

Chromium is driven over the DevTools protocol (``--remote-debugging-port``) with the
``websockets`` client already in the environment: ``--dump-dom`` returns before Streamlit's
websocket has delivered the page, so the test polls the live DOM until the results are there.
Needs the Debian package ``chromium`` (``apt-get install -y chromium``); skipped without it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from streamlit_app import client as lc

CHROMIUM = next((path for path in (shutil.which("chromium"), "/usr/bin/chromium",
                                   shutil.which("chromium-browser")) if path and
                 os.path.exists(path)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed: `apt-get install -y chromium` (Debian)")

RESULTS = ".st-key-lookalike-results"
PROBE = """(() => {
  const box = document.querySelector('%s');
  if (!box) return null;
  const imgs = Array.from(box.querySelectorAll('[data-testid="stImage"] img'));
  return {images: imgs.length,
          loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
          text: box.innerText,
          errors: Array.from(document.querySelectorAll('[data-testid="stAlertContentError"]'))
                  .map(e => e.innerText)};
})()""" % RESULTS


class DevTools:
    """Minimal Chrome DevTools protocol client over one page target."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=None, open_timeout=30)
        self._next = 0

    def call(self, method: str, **params):
        self._next += 1
        self._ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=30))
            if message.get("id") == self._next:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def close(self):
        self._ws.close()


@pytest.fixture()
def chromium(tmp_path):
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions",
         f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--window-size=1400,2200", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.close()
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def open_and_wait_for_results(chromium: DevTools, url: str, timeout: float = 90.0):
    """Open the app and wait until its results grid has 10 loaded images or an error box
    shows; the PROBE state at that point (None if nothing rendered in time)."""
    chromium.call("Page.navigate", url=url)
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = chromium.evaluate(PROBE)
        if state and (state["errors"] or state["loaded"] >= 10):
            break
        time.sleep(0.5)
    return state


def test_browser_shows_lookalikes_of_the_default_query(chromium, served_model, app_sample,
                                                       tmp_path):
    from lookalike.pipeline.demo import start_app
    from lookalike.processes import free_port, stop_process

    sample_path = app_sample[0]
    # What the app must show: the endpoint's neighbours of its default query.
    query = lc.random_page(lc.read_catalogue_sample(sample_path), 10, 0).iloc[0]
    expected = lc.LookalikeClient(served_model).similar_to_product(query["product_id"], k=10)
    assert len(expected) == 10

    process, url = start_app(served_model, free_port(), sample_path,
                             log_file=tmp_path / "streamlit.log")
    try:
        state = open_and_wait_for_results(chromium, url)
        log = (tmp_path / "streamlit.log").read_text(errors="replace")[-2000:]
        assert state, f"no results section rendered; streamlit log:\n{log}"
        assert not state["errors"], state["errors"]
        assert state["images"] == 10 and state["loaded"] == 10, state
        for neighbour in expected:
            assert neighbour.product_id in state["text"]
        assert "#1 " in state["text"] and "distance" in state["text"]
    finally:
        stop_process(process, grace=10)


def test_browser_page_never_holds_the_token(chromium, served_model, app_sample, tmp_path):
    """The bearer token stays on the server: not in the DOM, not in any input's value, not in
    the browser's storage; and the developer toolbar (Deploy button) is hidden."""
    from lookalike.pipeline.demo import start_app
    from lookalike.processes import free_port, stop_process

    token = "dapi-browser-secret-4b1d"
    process, url = start_app(served_model, free_port(), app_sample[0], token=token,
                             log_file=tmp_path / "streamlit.log")
    try:
        state = open_and_wait_for_results(chromium, url)
        assert state and not state["errors"] and state["loaded"] == 10, state
        page = chromium.evaluate("""(() => ({
          html: document.documentElement.outerHTML,
          inputs: Array.from(document.querySelectorAll('input, textarea')).map(e => e.value),
          storage: JSON.stringify(Object.assign({}, localStorage, sessionStorage)),
          deploy: !!document.querySelector('[data-testid="stAppDeployButton"]'),
          sidebar: (document.querySelector('[data-testid="stSidebar"]') || {}).innerText || ''
        }))()""")
        assert "Bearer token: set on the server" in page["sidebar"]
        assert token not in page["html"] and token not in page["storage"]
        assert not [v for v in page["inputs"] if token in v]
        assert not page["deploy"]
    finally:
        stop_process(process, grace=10)


# Glyphs that need an emoji or symbol font (arrows, symbols, dingbats, pictographs, emoji and
# their variation selector and joiner): without such a font Chromium draws empty boxes.
EMOJI_LIKE = re.compile("[\u2190-\u2bff\U0001f000-\U0001faff\ufe0f\u200d]")
TABS = """(() => Array.from(document.querySelectorAll('[data-testid="stTab"]'))
                  .map(t => t.innerText))()"""


def visible_text(chromium: DevTools) -> str:
    return chromium.evaluate("document.title + '\\n' + document.body.innerText") or ""


def wait_for_text(chromium: DevTools, needle: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    text = visible_text(chromium)
    while needle not in text and time.monotonic() < deadline:
        time.sleep(0.3)
        text = visible_text(chromium)
    return text


def test_browser_page_needs_no_emoji_font(chromium, served_model, app_sample, tmp_path):
    """Issue 22: every character the page shows (title, tab labels, buttons, captions, both
    tabs' contents, the sidebar) is one a plain text font has; and a screenshot of the page
    (tmp_path/app.png, for a reviewer) is a real picture, not a blank page."""
    from PIL import Image

    from lookalike.pipeline.demo import start_app
    from lookalike.processes import free_port, stop_process

    process, url = start_app(served_model, free_port(), app_sample[0],
                             log_file=tmp_path / "streamlit.log")
    try:
        state = open_and_wait_for_results(chromium, url)
        assert state and not state["errors"] and state["loaded"] == 10, state
        tabs = chromium.evaluate(TABS)
        assert tabs == ["Upload a photo", "Browse the catalogue"], tabs
        texts = {"upload tab": wait_for_text(chromium, "Shop the look")}
        shot = chromium.call("Page.captureScreenshot", format="png")
        chromium.evaluate("""document.querySelectorAll('[data-testid="stTab"]')[1].click()""")
        texts["browse tab"] = wait_for_text(chromium, "Show other products")
    finally:
        stop_process(process, grace=10)
    for where, text in texts.items():
        assert "You may also like" in text and "Browse the catalogue" in text, (where, text)
        found = sorted({f"U+{ord(c):04X} {c!r}" for c in EMOJI_LIKE.findall(text)})
        assert not found, f"{where} shows glyphs that need an emoji font: {found}"
    assert "Shop the look" in texts["upload tab"]
    assert "Show other products" in texts["browse tab"]

    data = base64.b64decode(shot["data"])
    (tmp_path / "app.png").write_bytes(data)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and min(image.size) >= 400, image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    # Text, product images and widgets: far more than a blank or half-drawn page has.
    assert len(colours) > 200, len(colours)

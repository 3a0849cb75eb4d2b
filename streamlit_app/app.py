"""Lookalike demo shop page: upload a photo or pick a catalogue product, see lookalikes.

Run: ``streamlit run streamlit_app/app.py`` (``lookalike demo`` starts it with the REST server).

"Shop the look" (a checkbox under the upload) sends the photo with ``look: true``: the answer
is shown as the photo with each garment's box, then one row of lookalikes per garment; a model
packaged without look answers HTTP 400 (``look.enabled``), and the page says so in one line and
shows the plain answer. The page holds no glyph that needs an emoji font (tests/app/
test_browser.py checks the rendered text).

Configuration (the server's environment; see :class:`streamlit_app.client.AppConfig`):

* ``LOOKALIKE_ENDPOINT``: REST endpoint, e.g. ``http://127.0.0.1:5001`` (``mlflow models serve``)
  or ``https://<workspace>/serving-endpoints/<name>/invocations`` (Databricks model serving).
  Fixed for visitors unless ``LOOKALIKE_ALLOW_ENDPOINT_EDIT=1``. Either way only a plain
  http(s) URL is used (no user@, query or fragment), redirects are not followed, ``~/.netrc``
  is not read, answers over ``client.MAX_RESPONSE_BYTES`` (16 MB) are refused, and of an error
  answer the page shows only a 400's message (anything else goes to the app's log).
* ``LOOKALIKE_TOKEN``: bearer token for Databricks model serving (optional). It stays on the
  server: never rendered into the page, never a widget value, only sent to the configured
  endpoint (an edited endpoint gets no token).
* ``LOOKALIKE_SERVING_ENDPOINT``: as a Databricks App (conf/bundle/app.yml), the serving
  endpoint's name; requests carry the app's service principal credentials (no token), and a
  ``/Volumes/...`` catalogue sample is read through the Files API.
* ``LOOKALIKE_MAX_UPLOAD_BYTES`` / ``LOOKALIKE_MAX_UPLOAD_PIXELS`` /
  ``LOOKALIKE_MAX_DECODE_BYTES``: upload limits, checked before anything is decoded (defaults
  10 MB, 25 MP, 50 MB: the REST server's own limits). Streamlit itself must refuse larger
  bodies first: start it with ``--server.maxUploadSize`` set to the MB limit rounded up
  (``make app``, ``lookalike demo`` and conf/bundle/app.yml do; Streamlit's default is 200).
* ``LOOKALIKE_CATALOGUE_SAMPLE``: parquet written by ``lookalike.pipeline.export_catalogue_sample``
  (default ``$LOOKALIKE_HOME/app/catalogue_sample.parquet``) used for browsing; the app never
  reads Delta (no JVM), neighbour images come from the endpoint (``include_images``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import streamlit as st

_ROOT = Path(__file__).resolve().parents[1]
# The checkout's root (streamlit_app) and src/ (lookalike, where it is not installed: a
# Databricks App runs from the bundle's files).
for _path in (_ROOT / "src", _ROOT):
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from streamlit_app import client as lc  # noqa: E402
from streamlit_app.client import escape_markdown as md  # noqa: E402

PAGE_SIZE = 10
GRID_COLUMNS = 5
ALL_CATEGORIES = "All categories"
# Headings of shop-the-look rows (the server's garment names); another name is shown as sent.
GARMENT_HEADINGS = {"top": "Top", "bottom": "Bottom", "shoes": "Shoes",
                    "whole": "The whole photo (no garments found on a person)"}
LOOK_UNSUPPORTED = ("Shop the look is not available: this model was packaged without shop the "
                    "look. Showing lookalikes of the whole photo.")


# Bounded: with LOOKALIKE_ALLOW_ENDPOINT_EDIT=1 every URL a visitor types is a new entry.
@st.cache_resource(max_entries=8, show_spinner=False)
def get_client(endpoint: str, token: str | None, workspace: bool = False) -> lc.LookalikeClient:
    """One HTTP client (connection pool) per endpoint and credentials, shared by all sessions
    (server-side memory: no token or credential is ever sent to the browser)."""
    return lc.LookalikeClient(endpoint=endpoint, token=token or None,
                              auth=lc.workspace_auth() if workspace else None)


@st.cache_data(show_spinner=False)
def load_sample(path: str, modified: float, workspace: bool = False):
    """The catalogue sample; ``modified`` (file mtime, or the hour for a Volume read through
    the workspace) makes a re-export visible."""
    return lc.read_catalogue_sample(path, workspace)


# At most 32 answers, each at most client.MAX_RESPONSE_BYTES (in practice k <= 50 thumbnails,
# about 5 MB): what the cache can hold is bounded.
@st.cache_data(ttl=300, max_entries=32, show_spinner=False)
def recommend(endpoint: str, token: str | None, kind: str, value, k: int, category: str | None,
              workspace: bool = False, look: bool = False):
    """Neighbours of a product id or image bytes (with ``look``, per garment of the image);
    errors are raised, never cached."""
    api = get_client(endpoint, token, workspace)
    if kind == "image":
        return api.similar_to_image(value, k=k, category=category, look=look)
    return api.similar_to_product(value, k=k, category=category)


def set_query(kind: str, value, label: str, image: bytes | None = None,
              category: str | None = None) -> None:
    st.session_state["query"] = {"kind": kind, "value": value, "label": label, "image": image,
                                 "category": category}


@st.cache_data(max_entries=8, show_spinner=False)
def upload_preview(key: str, _data: bytes, _config: lc.AppConfig) -> bytes | None:
    """The preview PNG of an upload (``key``: its digest), None if it does not decode: made
    once per upload, not on every rerun. The limits are the process's own, fixed."""
    from lookalike.preprocessing import ImageRejected

    try:
        return lc.preview_png(_data, _config)
    except ImageRejected:
        return None


@st.cache_data(max_entries=8, show_spinner=False)
def look_preview(key: str, boxes: tuple, _data: bytes, _config: lc.AppConfig) -> bytes | None:
    """The upload with its garment boxes drawn (``key``: its digest; ``boxes``: (label, box)
    pairs), None if it does not decode: made once per upload and answer."""
    from lookalike.preprocessing import ImageRejected

    try:
        return lc.look_preview_png(_data, boxes, _config)
    except ImageRejected:
        return None


def show_image(data: bytes, width: int) -> None:
    """st.image of a data: URI of trusted image bytes (catalogue and endpoint thumbnails).

    Data URIs keep images inside the page message: no /media round trip (which Streamlit 1.60
    on Starlette 1.x fails for image types) and nothing to expire between reruns.
    """
    st.image(lc.data_uri(data), width=width)


def show_upload(data: bytes, width: int, config: lc.AppConfig) -> None:
    """An upload's preview, decoded at bounded cost, or a note when it does not decode (the
    endpoint's answer says why)."""
    preview = upload_preview(lc.digest(data), data, config)
    if preview is None:
        st.caption("(no preview)")
    else:
        show_image(preview, width)


def sample_row(sample, product_id: str):
    if sample is None:
        return None
    rows = sample[sample["product_id"] == product_id]
    return None if rows.empty else rows.iloc[0]


def sidebar(config: lc.AppConfig, sample):
    """(endpoint, k, category) chosen in the sidebar. The token is never a widget: the page
    only says whether the server has one."""
    st.sidebar.header("Endpoint")
    if config.allow_endpoint_edit:
        endpoint = st.sidebar.text_input(
            "REST endpoint URL", value=config.endpoint, key="endpoint",
            help="mlflow models serve URL, or a Databricks serving endpoint URL. The server's "
                 "bearer token is only sent to the configured endpoint.")
    else:
        endpoint = config.endpoint
        st.sidebar.caption(f"REST endpoint: {md(endpoint)} (set by {lc.ENDPOINT_ENV})")
    if config.workspace:
        st.sidebar.caption("Credentials: the app's service principal (server side)")
    else:
        st.sidebar.caption("Bearer token: " + ("set on the server" if config.token else "none"))
    st.sidebar.header("Results")
    k = st.sidebar.slider("How many lookalikes (k)", min_value=1, max_value=50, value=10, key="k")
    if sample is not None and len(sample):
        options = [ALL_CATEGORIES, *sorted(sample["category"].dropna().unique())]
        chosen = st.sidebar.selectbox("Category filter", options, key="category")
        category = None if chosen == ALL_CATEGORIES else chosen
    else:
        category = st.sidebar.text_input("Category filter (exact name, empty = all)",
                                         key="category_text").strip() or None
    return endpoint.strip(), int(k), category


def upload_section(config: lc.AppConfig) -> None:
    # Streamlit's own limit (MB) in the browser; the server's is --server.maxUploadSize.
    uploaded = st.file_uploader("Photo of a product (JPEG, PNG or WebP)",
                                type=list(lc.UPLOAD_TYPES), key="upload",
                                max_upload_size=config.upload_size_mb)
    st.checkbox("Shop the look: one row per garment", key="look",
                help="Find the garments the person in the photo wears (top, bottom, shoes) "
                     "and show lookalikes of each.")
    if uploaded is not None:
        data = uploaded.getvalue()
        seen = (getattr(uploaded, "file_id", None) or uploaded.name, len(data))
        if st.session_state.get("upload_seen") != seen:
            st.session_state["upload_seen"] = seen
            problem = lc.check_upload(uploaded.name, data, config.max_upload_bytes,
                                      config.max_upload_pixels, config.max_decode_bytes)
            if problem:
                st.session_state["query"] = None
                st.error(md(problem))
            else:
                set_query("image", data, f"Your photo: {uploaded.name}", image=data)
    product_id = st.text_input("…or a product id", key="product_id_input",
                               placeholder="fmnist-train-00042")
    if st.button("Find lookalikes", key="find_by_id") and product_id.strip():
        set_query("product", product_id.strip(), product_id.strip())


def browse_section(sample, category: str | None) -> None:
    if sample is None or len(sample) == 0:
        st.info(f"No catalogue sample at {md(lc.default_sample_path())}. Run `lookalike demo` "
                "(or `lookalike.pipeline.export_catalogue_sample`) to export one, or set "
                f"{lc.SAMPLE_ENV}.")
        return
    if st.button("Show other products", key="shuffle"):
        st.session_state["page_seed"] = st.session_state.get("page_seed", 0) + 1
    page = lc.random_page(sample, PAGE_SIZE, st.session_state.get("page_seed", 0), category)
    if page is None or len(page) == 0:
        st.info(f"No sampled products in category {md(repr(category))}.")
        return
    for start in range(0, len(page), GRID_COLUMNS):
        columns = st.columns(GRID_COLUMNS)
        for column, (_, row) in zip(columns, page.iloc[start:start + GRID_COLUMNS].iterrows()):
            with column:
                show_image(row["thumbnail"], width=96)
                # Catalogue data as plain text: st.text parses no Markdown.
                st.text(f"{row['category']} · {row['product_id']}")
                if st.button("More like this", key=f"more-{row['product_id']}"):
                    set_query("product", row["product_id"], row["product_id"],
                              image=row["thumbnail"], category=row["category"])


def fetch(config: lc.AppConfig, endpoint: str, query: dict, k: int, category: str | None,
          look: bool):
    """The endpoint's answer to ``query``: with ``look`` (an upload), per garment, or the plain
    answer after a note when the model was packaged without shop the look (remembered for
    the session's endpoint, so reruns do not send the photo twice)."""
    token, workspace = config.token_for(endpoint), config.workspace_for(endpoint)
    look = look and query["kind"] == "image"
    if look and st.session_state.get("look_unsupported") == endpoint:
        st.info(LOOK_UNSUPPORTED)
        look = False
    if look:
        try:
            return recommend(endpoint, token, query["kind"], query["value"], k, category,
                             workspace, look=True)
        except lc.EndpointError as error:
            if not lc.look_unsupported(error):
                raise
        st.session_state["look_unsupported"] = endpoint
        st.info(LOOK_UNSUPPORTED)
    return recommend(endpoint, token, query["kind"], query["value"], k, category, workspace)


def show_grid(neighbours, sample, key: str, button_prefix: str) -> None:
    """Neighbours in a grid of GRID_COLUMNS: image, caption and id as plain text, and a
    "More like this" button each. ``key``: the grid's container (CSS class st-key-<key>, a
    stable hook for browser tests)."""
    grid = st.container(key=key)
    for start in range(0, len(neighbours), GRID_COLUMNS):
        columns = grid.columns(GRID_COLUMNS)
        for column, item in zip(columns, neighbours[start:start + GRID_COLUMNS]):
            with column:
                image = item.image
                if image is None:
                    row = sample_row(sample, item.product_id)
                    image = None if row is None else row["thumbnail"]
                if image is not None:
                    show_image(image, width=96)
                st.text(lc.caption(item))
                st.text(item.product_id)
                if st.button("More like this", key=f"{button_prefix}{item.product_id}"):
                    set_query("product", item.product_id, item.product_id, image=image,
                              category=item.category)
                    st.rerun()


def garment_heading(garment: str | None) -> str:
    return GARMENT_HEADINGS.get(garment or "", garment or "Lookalikes")


def results_section(config: lc.AppConfig, endpoint: str, k: int, category: str | None,
                    sample) -> None:
    st.subheader("You may also like")
    query = st.session_state.get("query")
    if not query:
        st.info("Upload a photo or pick a product to see lookalikes.")
        return
    left, right = st.columns([1, 4])
    failure = None
    with right:
        try:
            with st.spinner("Finding lookalikes…"):
                neighbours = fetch(config, endpoint, query, k, category,
                                   bool(st.session_state.get("look")))
        except lc.EndpointError as error:
            neighbours, failure = None, error
        rows = lc.garment_rows(neighbours or [])
        per_garment = any(row.garment is not None for row in rows)
    with left:
        st.markdown("**Query**")
        boxes = tuple((row.garment or "", row.box) for row in rows
                      if row.box is not None and row.garment != "whole")
        if query["kind"] == "image" and per_garment:
            preview = look_preview(lc.digest(query["image"]), boxes, query["image"], config)
            if preview is None:
                st.caption("(no preview)")
            else:
                show_image(preview, 192)
        elif query["kind"] == "image":
            show_upload(query["image"], 128, config)
        elif query["image"] is not None:
            show_image(query["image"], width=128)
        st.text(query["label"] + (f" ({query['category']})" if query.get("category") else ""))
    with right:
        if neighbours is None:
            st.error(md(failure))
            return
        if not neighbours:
            where = f" in category {category!r}" if category else ""
            st.warning(md(f"No lookalikes found{where}."))
            return
        if not per_garment:
            st.markdown(f"**{len(neighbours)} lookalikes**"
                        + (f" in {md(category)}" if category else ""))
            show_grid(neighbours, sample, "lookalike-results", "again-")
            return
        st.markdown(f"**{len(neighbours)} lookalikes**, one row per garment"
                    + (f", in {md(category)}" if category else ""))
        for i, row in enumerate(rows):
            # A heading per garment, as plain text: a name the app does not know is escaped.
            st.subheader(md(garment_heading(row.garment)), anchor=False)
            show_grid(list(row.neighbours), sample, f"lookalike-results-{i}", f"again-{i}-")


def main() -> None:
    # No page_icon: Streamlit's own favicon is an image, where an emoji needs an emoji font.
    st.set_page_config(page_title="Lookalike", layout="wide")
    try:
        config = lc.AppConfig.from_environ()
    except lc.EndpointError as error:     # a misconfigured deployment: say so, plainly
        st.error(md(error))
        return
    sample_path = lc.default_sample_path()
    try:
        if sample_path.exists():
            modified = sample_path.stat().st_mtime
        else:   # a Volume through the Files API: look again every hour (nightly export)
            modified = float(int(time.time() // 3600)) if config.workspace else 0.0
        sample = load_sample(str(sample_path), modified, config.workspace)
    except Exception as error:  # a broken sample must not take the page down
        st.warning(md(f"Could not read the catalogue sample {sample_path}: {error}"))
        sample = None
    endpoint, k, category = sidebar(config, sample)

    st.title("Lookalike")
    st.caption("Visual “you may also like”: upload a photo or pick a product, "
               "and get the most similar products of the catalogue.")
    # Plain text only (tests/app/test_browser.py): no glyph that needs an emoji font.
    upload_tab, browse_tab = st.tabs(["Upload a photo", "Browse the catalogue"])
    with upload_tab:
        upload_section(config)
    with browse_tab:
        browse_section(sample, category)
    if "query" not in st.session_state and sample is not None and len(sample):
        # Open with results: the first product of the browse page as a default query.
        first = lc.random_page(sample, PAGE_SIZE, st.session_state.get("page_seed", 0)).iloc[0]
        set_query("product", first["product_id"], first["product_id"], image=first["thumbnail"],
                  category=first["category"])
    st.divider()
    results_section(config, endpoint, k, category, sample)


main()

"""Lookalike demo shop page: upload a photo or pick a catalogue product, see lookalikes.

Run: ``streamlit run streamlit_app/app.py`` (``lookalike demo`` starts it with the REST server).

Configuration (the server's environment; see :class:`streamlit_app.client.AppConfig`):

* ``LOOKALIKE_ENDPOINT``: REST endpoint, e.g. ``http://127.0.0.1:5001`` (``mlflow models serve``)
  or ``https://<workspace>/serving-endpoints/<name>/invocations`` (Databricks model serving).
  Fixed for visitors unless ``LOOKALIKE_ALLOW_ENDPOINT_EDIT=1``.
* ``LOOKALIKE_TOKEN``: bearer token for Databricks model serving (optional). It stays on the
  server: never rendered into the page, never a widget value, only sent to the configured
  endpoint (an edited endpoint gets no token).
* ``LOOKALIKE_SERVING_ENDPOINT``: as a Databricks App (conf/bundle/app.yml), the serving
  endpoint's name; requests carry the app's service principal credentials (no token), and a
  ``/Volumes/...`` catalogue sample is read through the Files API.
* ``LOOKALIKE_MAX_UPLOAD_BYTES`` / ``LOOKALIKE_MAX_UPLOAD_PIXELS``: upload limits, checked
  before anything is decoded (defaults 10 MB, 25 MP: the REST server's own limits).
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

from lookalike.preprocessing import thumbnail_png  # noqa: E402
from streamlit_app import client as lc  # noqa: E402

PAGE_SIZE = 10
GRID_COLUMNS = 5
ALL_CATEGORIES = "All categories"


@st.cache_resource(show_spinner=False)
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


@st.cache_data(ttl=300, max_entries=200, show_spinner=False)
def recommend(endpoint: str, token: str | None, kind: str, value, k: int, category: str | None,
              workspace: bool = False):
    """Neighbours of a product id or image bytes; errors are raised, never cached."""
    api = get_client(endpoint, token, workspace)
    if kind == "image":
        return api.similar_to_image(value, k=k, category=category)
    return api.similar_to_product(value, k=k, category=category)


def set_query(kind: str, value, label: str, image: bytes | None = None,
              category: str | None = None) -> None:
    st.session_state["query"] = {"kind": kind, "value": value, "label": label, "image": image,
                                 "category": category}


def show_image(data: bytes, width: int, trusted: bool = True) -> None:
    """st.image of a data: URI; untrusted bytes (uploads) are decoded into a small thumbnail
    first, with a note instead when they do not decode (the endpoint's answer says why).

    Data URIs keep images inside the page message: no /media round trip (which Streamlit 1.60
    on Starlette 1.x fails for image types) and nothing to expire between reruns.
    """
    if not trusted:
        try:
            data = thumbnail_png(data, max_side=256)
        except Exception:  # noqa: BLE001 - undecodable upload
            st.caption("(no preview)")
            return
    st.image(lc.data_uri(data), width=width)


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
        st.sidebar.caption(f"REST endpoint: {endpoint} (set by {lc.ENDPOINT_ENV})")
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
    uploaded = st.file_uploader("Photo of a product (JPEG, PNG or WebP)",
                                type=list(lc.UPLOAD_TYPES), key="upload")
    if uploaded is not None:
        data = uploaded.getvalue()
        seen = (getattr(uploaded, "file_id", None) or uploaded.name, len(data))
        if st.session_state.get("upload_seen") != seen:
            st.session_state["upload_seen"] = seen
            problem = lc.check_upload(uploaded.name, data, config.max_upload_bytes,
                                      config.max_upload_pixels)
            if problem:
                st.session_state["query"] = None
                st.error(problem)
            else:
                set_query("image", data, f"Your photo: {uploaded.name}", image=data)
    product_id = st.text_input("…or a product id", key="product_id_input",
                               placeholder="fmnist-train-00042")
    if st.button("Find lookalikes", key="find_by_id") and product_id.strip():
        set_query("product", product_id.strip(), product_id.strip())


def browse_section(sample, category: str | None) -> None:
    if sample is None or len(sample) == 0:
        st.info(f"No catalogue sample at {lc.default_sample_path()}. Run `lookalike demo` (or "
                "`lookalike.pipeline.export_catalogue_sample`) to export one, or set "
                f"{lc.SAMPLE_ENV}.")
        return
    if st.button("🔀 Show other products", key="shuffle"):
        st.session_state["page_seed"] = st.session_state.get("page_seed", 0) + 1
    page = lc.random_page(sample, PAGE_SIZE, st.session_state.get("page_seed", 0), category)
    if page is None or len(page) == 0:
        st.info(f"No sampled products in category {category!r}.")
        return
    for start in range(0, len(page), GRID_COLUMNS):
        columns = st.columns(GRID_COLUMNS)
        for column, (_, row) in zip(columns, page.iloc[start:start + GRID_COLUMNS].iterrows()):
            with column:
                show_image(row["thumbnail"], width=96)
                st.caption(f"{row['category']} · {row['product_id']}")
                if st.button("More like this", key=f"more-{row['product_id']}"):
                    set_query("product", row["product_id"], row["product_id"],
                              image=row["thumbnail"], category=row["category"])


def results_section(config: lc.AppConfig, endpoint: str, k: int, category: str | None,
                    sample) -> None:
    st.subheader("You may also like")
    query = st.session_state.get("query")
    if not query:
        st.info("Upload a photo or pick a product to see lookalikes.")
        return
    left, right = st.columns([1, 4])
    with left:
        st.markdown("**Query**")
        if query["image"] is not None:
            show_image(query["image"], width=128, trusted=query["kind"] != "image")
        st.caption(query["label"] + (f" ({query['category']})" if query.get("category") else ""))
    with right:
        try:
            with st.spinner("Finding lookalikes…"):
                neighbours = recommend(endpoint, config.token_for(endpoint), query["kind"],
                                       query["value"], k, category,
                                       config.workspace_for(endpoint))
        except lc.EndpointError as error:
            st.error(str(error))
            return
        if not neighbours:
            where = f" in category {category!r}" if category else ""
            st.warning(f"No lookalikes found{where}.")
            return
        st.markdown(f"**{len(neighbours)} lookalikes**"
                    + (f" in {category}" if category else ""))
        # Keyed container: a stable hook (CSS class st-key-lookalike-results) for browser tests.
        grid = st.container(key="lookalike-results")
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
                    st.caption(lc.caption(item))
                    st.caption(item.product_id)
                    if st.button("More like this", key=f"again-{item.product_id}"):
                        set_query("product", item.product_id, item.product_id, image=image,
                                  category=item.category)
                        st.rerun()


def main() -> None:
    st.set_page_config(page_title="Lookalike", page_icon="👗", layout="wide")
    try:
        config = lc.AppConfig.from_environ()
    except lc.EndpointError as error:     # a misconfigured deployment: say so, plainly
        st.error(str(error))
        return
    sample_path = lc.default_sample_path()
    try:
        if sample_path.exists():
            modified = sample_path.stat().st_mtime
        else:   # a Volume through the Files API: look again every hour (nightly export)
            modified = float(int(time.time() // 3600)) if config.workspace else 0.0
        sample = load_sample(str(sample_path), modified, config.workspace)
    except Exception as error:  # a broken sample must not take the page down
        st.warning(f"Could not read the catalogue sample {sample_path}: {error}")
        sample = None
    endpoint, k, category = sidebar(config, sample)

    st.title("Lookalike")
    st.caption("Visual “you may also like”: upload a photo or pick a product, "
               "and get the most similar products of the catalogue.")
    upload_tab, browse_tab = st.tabs(["📷 Upload a photo", "🛍️ Browse the catalogue"])
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

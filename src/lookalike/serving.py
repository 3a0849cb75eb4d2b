"""The ``lookalike`` MLflow pyfunc (embedding model + ANN index + product metadata) and its
REST server (``mlflow models serve``).

REST contract (``POST <url>/invocations``, ``Content-Type: application/json``)
=============================================================================

Request: a DataFrame in any MLflow JSON layout (``dataframe_records`` is simplest), one row per
query, each row with exactly one of:

* ``image`` -- base64 of a JPEG, PNG or WebP (any size or colour mode; a ``data:image/...;
  base64,`` prefix is accepted). It goes through :mod:`lookalike.preprocessing` exactly as the
  catalogue did, then the embedding model.
* ``product_id`` -- a catalogue product ("more like this"); its stored vector is the query.

and optional ``params``:

============== ======= ============================ =========================================
param          type    default                      meaning
============== ======= ============================ =========================================
k              long    ``serving.default_k`` (10)   neighbours per query, 1..``serving.max_k``
category       string  ``""`` (any)                 only neighbours of this category
exclude_self   boolean true                         product_id queries never return themselves
include_images boolean false                        add ``image``: base64 PNG thumbnail
============== ======= ============================ =========================================

Response: ``{"predictions": [...]}``, one record per neighbour, ordered by query then rank:
``query`` (long: 0-based row of the request), ``rank`` (long, 1 = nearest), ``product_id``
(string), ``category`` (string), ``title`` (string or null), ``distance`` (double: cosine
distance ``1 - cos`` for cosine models, euclidean for l2), and ``image`` (string, only with
``include_images``). A query with fewer matching products returns fewer rows.

Errors: every invalid request -- bad base64, bytes that are not an image, unsupported format,
image over ``serving.max_image_bytes`` / ``serving.max_pixels``, unknown product_id or
category, k outside 1..max_k, a row with both or neither of image/product_id, no rows, more
than ``serving.max_batch`` rows -- is answered HTTP 400 with
``{"error_code": "INVALID_PARAMETER_VALUE", "message": "..."}`` and the server keeps serving.

Example::

    curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d '{
      "dataframe_records": [{"product_id": "fmnist-test-00042"},
                            {"image": "iVBORw0KGgoAAAANSUhEUgAA..."}],
      "params": {"k": 5, "category": "Sneaker"}}'

Python: :func:`start_server` (background, waits for ``/ping``) and :func:`serve` (blocking,
``lookalike serve``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlflow.pyfunc import PythonModel

from lookalike.config import Settings

log = logging.getLogger(__name__)

# Artifact keys of the pyfunc (folder names under <model>/artifacts/).
ARTIFACT_MODEL = "embedding_model"
ARTIFACT_INDEX = "index"
ARTIFACT_PRODUCTS = "products.parquet"
OUTPUT_COLUMNS = ["query", "rank", "product_id", "category", "title", "distance"]


class ConsistencyError(RuntimeError):
    """The packaged embedding model and index do not belong together."""


def _bad_request(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def default_params(settings: Settings) -> dict[str, Any]:
    return {"k": int(settings.serving.default_k), "category": "", "exclude_self": True,
            "include_images": False}


def limits_from(settings: Settings) -> dict[str, Any]:
    """The request limits baked into a packaged model (serving section of the settings)."""
    return {"default_k": settings.serving.default_k, "max_k": settings.serving.max_k,
            "max_batch": settings.serving.max_batch,
            "max_image_bytes": settings.serving.max_image_bytes,
            "max_pixels": settings.serving.max_pixels,
            "allowed_formats": list(settings.catalogue.allowed_formats)}


def check_consistency(info: dict, index) -> None:
    """Raise :class:`ConsistencyError` unless ``index`` was built for the model ``info`` describes."""
    dim = int(info.get("embedding_size", -1))
    if index.dim != dim:
        raise ConsistencyError(f"index dimension {index.dim} != embedding model dimension {dim}: "
                               "the index was built by another model; rerun build-index")
    built_by = index.metadata.get("model_version")
    run = info.get("training_run_id")
    if run and built_by != run:
        raise ConsistencyError(f"index was built from embeddings of model version {built_by!r}, "
                               f"but the embedding model is {run!r}; rerun embed + build-index "
                               "for this model before packaging")
    distance = info.get("distance")
    if distance and index.distance != distance:
        raise ConsistencyError(f"index distance {index.distance!r} != model distance "
                               f"{distance!r}")


class Recommender:
    """The serving logic, independent of MLflow's context object (also used by tests)."""

    def __init__(self, model_dir: str | Path, index_dir: str | Path, products_path: str | Path,
                 limits: dict[str, Any]):
        from lookalike.index import load_index
        from lookalike.model import load_embedding_model

        self.limits = dict(limits)
        self.model = load_embedding_model(model_dir)
        self.index = load_index(index_dir)
        check_consistency(self.model.info, self.index)
        products = pd.read_parquet(products_path)
        ids = products["product_id"].astype(str).tolist()
        self.category = dict(zip(ids, products["category"].astype(str)))
        titles = products["title"] if "title" in products else pd.Series([None] * len(ids))
        self.title = {i: (t if isinstance(t, str) else None) for i, t in zip(ids, titles)}
        self.thumbnail = (dict(zip(ids, products["thumbnail"]))
                          if "thumbnail" in products else {})
        self.categories = sorted(self.index.categories())
        self._category_set = set(self.categories)
        self.size, self.channels = self.model.image_size, self.model.channels
        # Trace/warm the TF function once so the first request is not slow.
        self.model.embed(np.zeros((1, self.size, self.size, self.channels), np.float32))

    # -- request parsing -------------------------------------------------------------

    def _params(self, params: dict[str, Any] | None) -> tuple[int, str | None, bool, bool]:
        params = params or {}
        k = params.get("k", self.limits["default_k"])
        try:
            if isinstance(k, bool) or float(k) != int(k):
                raise ValueError
            k = int(k)
        except (TypeError, ValueError):
            raise _bad_request(f"k must be an integer, got {k!r}") from None
        if not 1 <= k <= self.limits["max_k"]:
            raise _bad_request(f"k must be between 1 and {self.limits['max_k']}, got {k}")
        category = params.get("category") or None
        if category is not None:
            category = str(category)
            if category not in self._category_set:
                raise _bad_request(f"unknown category {category!r}; known categories: "
                                   f"{self.categories}")
        exclude_self = _as_bool(params.get("exclude_self", True), "exclude_self")
        include_images = _as_bool(params.get("include_images", False), "include_images")
        return k, category, exclude_self, include_images

    def _decode(self, text: Any, row: int) -> np.ndarray:
        from lookalike.preprocessing import ImageRejected, inspect_image, to_model_input

        if isinstance(text, (bytes, bytearray)):
            data = bytes(text)
        else:
            text = str(text).strip()
            if text.startswith("data:"):
                text = text.partition(",")[2]
            text = "".join(text.split())
            # Refuse oversized payloads before allocating their decoded bytes.
            if len(text) > (self.limits["max_image_bytes"] + 2) // 3 * 4 + 4:
                raise _bad_request(f"row {row}: image is larger than "
                                   f"{self.limits['max_image_bytes']} bytes")
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise _bad_request(f"row {row}: image is not valid base64") from None
        try:
            inspect_image(data, self.limits["max_image_bytes"], self.limits["max_pixels"],
                          self.limits["allowed_formats"])
            return to_model_input(data, self.size, self.channels)
        except ImageRejected as rejected:
            raise _bad_request(f"row {row}: image rejected ({rejected.reason}): "
                               f"{rejected.detail}") from None
        except Exception as error:  # noqa: BLE001 - any decoder failure is the client's input
            raise _bad_request(f"row {row}: image could not be decoded: {error}") from None

    # -- predict ------------------------------------------------------------------------

    def recommend(self, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        k, category, exclude_self, include_images = self._params(params)
        if not isinstance(frame, pd.DataFrame):
            raise _bad_request("input must be a table with columns 'image' and/or 'product_id'")
        n = len(frame)
        if n == 0:
            raise _bad_request("empty input: send at least one row with 'image' or 'product_id'")
        if n > self.limits["max_batch"]:
            raise _bad_request(f"too many rows: {n} > max_batch {self.limits['max_batch']}")
        unknown_columns = sorted(set(frame.columns) - {"image", "product_id"})
        if unknown_columns:
            raise _bad_request(f"unknown columns {unknown_columns}; use 'image' or 'product_id'")
        images = frame["image"].tolist() if "image" in frame else [None] * n
        products = frame["product_id"].tolist() if "product_id" in frame else [None] * n

        vectors = np.empty((n, self.index.dim), dtype=np.float32)
        excludes: list[set[str]] = [set() for _ in range(n)]
        image_rows, pixels = [], []
        for row, (image, pid) in enumerate(zip(images, products)):
            has_image, has_pid = _present(image), _present(pid)
            if has_image == has_pid:
                which = "both" if has_image else "neither"
                raise _bad_request(f"row {row}: give exactly one of 'image' or 'product_id' "
                                   f"(got {which})")
            if has_pid:
                pid = str(pid)
                if not self.index.contains(pid):
                    raise _bad_request(f"row {row}: unknown product_id {pid!r}")
                vectors[row] = self.index.vector_of(pid)
                if exclude_self:
                    excludes[row] = {pid}
            else:
                image_rows.append(row)
                pixels.append(self._decode(image, row))
        if image_rows:
            vectors[image_rows] = self.model.embed(np.stack(pixels))
        hits = self.index.search(vectors, k, category=category,
                                 exclude_ids=excludes if exclude_self else None)

        query, rank, ids, distances = [], [], [], []
        for q, row_hits in enumerate(hits):
            for r, (pid, dist) in enumerate(row_hits, start=1):
                query.append(q)
                rank.append(r)
                ids.append(pid)
                distances.append(dist)
        out = {"query": np.asarray(query, dtype=np.int64), "rank": np.asarray(rank, dtype=np.int64),
               "product_id": ids, "category": [self.category.get(i) for i in ids],
               "title": [self.title.get(i) for i in ids],
               "distance": np.asarray(distances, dtype=np.float64)}
        if include_images:
            out["image"] = [_b64(self.thumbnail.get(i)) for i in ids]
        return pd.DataFrame(out)


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):
        return False
    if isinstance(value, str) and not value.strip():
        return False
    return True


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _bad_request(f"{name} must be true or false, got {value!r}")


def _b64(data: Any) -> str | None:
    return base64.b64encode(bytes(data)).decode("ascii") if data is not None else None


class LookalikeModel(PythonModel):
    """``mlflow.pyfunc`` wrapper of :class:`Recommender`; see the module docstring for I/O."""

    def __init__(self, limits: dict[str, Any]):
        self.limits = dict(limits)
        self.recommender: Recommender | None = None

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        self.recommender = Recommender(artifacts[ARTIFACT_MODEL], artifacts[ARTIFACT_INDEX],
                                       artifacts[ARTIFACT_PRODUCTS], self.limits)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        return self.recommender.recommend(model_input, params)


# --------------------------------------------------------------------------- packaging


def _requirements() -> list[str]:
    from importlib import metadata

    pins = []
    for name in ("mlflow", "tensorflow", "faiss-cpu", "numpy", "pandas", "pyarrow", "pillow",
                 "pyyaml"):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def log_lookalike_model(settings: Settings, model_dir: Path, index_path: Path,
                        products_path: Path, name: str = "model"):
    """Log the pyfunc into the active run; returns MLflow's ModelInfo.

    The signature (input columns, output columns, params with defaults) is inferred from a real
    prediction on a two-row example (one image query, one product_id query).
    """
    import mlflow
    from mlflow.models import infer_signature

    import lookalike

    limits = limits_from(settings)
    recommender = Recommender(model_dir, index_path, products_path, limits)
    first = recommender.index.ids()[0]
    products = pd.read_parquet(products_path, columns=["product_id", "thumbnail"])
    thumb = products.loc[products["product_id"] == first, "thumbnail"]
    image_b64 = _b64(thumb.iloc[0]) if len(thumb) and thumb.iloc[0] is not None else None
    example = pd.DataFrame({"image": [image_b64, None], "product_id": [None, first]})
    params = default_params(settings)
    output = recommender.recommend(example, {**params, "k": 3})
    with warnings.catch_warnings():
        # "integer columns cannot represent missing values": our ints (query, rank) never are.
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(example, output, params=params)
    code = Path(lookalike.__file__).resolve().parent
    staging = None
    if Path(index_path).name != ARTIFACT_INDEX:
        # MLflow names an artifact folder after its source; stage it as "index".
        staging = Path(tempfile.mkdtemp(prefix="lookalike-index-"))
        index_path = shutil.copytree(index_path, staging / ARTIFACT_INDEX)
    try:
        return _log_model(mlflow, name, limits, model_dir, index_path, products_path, code,
                          signature, example, params)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _log_model(mlflow, name, limits, model_dir, index_path, products_path, code, signature,
               example, params):
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=LookalikeModel(limits),
        artifacts={ARTIFACT_MODEL: str(model_dir), ARTIFACT_INDEX: str(index_path),
                   ARTIFACT_PRODUCTS: str(products_path)},
        code_paths=[str(code)],
        signature=signature,
        input_example=(example, {**params, "k": 3}),
        pip_requirements=_requirements(),
    )


def packaged_artifacts(model_path: str | Path) -> dict[str, Path]:
    """Local paths of the pyfunc's artifacts (keys ARTIFACT_*) in a downloaded model folder."""
    from mlflow.models import Model

    model_path = Path(model_path)
    flavor = Model.load(str(model_path)).flavors["python_function"]
    return {key: model_path / value["path"] for key, value in flavor["artifacts"].items()}


# --------------------------------------------------------------------------- REST server


def default_model_uri(settings: Settings) -> str:
    return f"models:/{settings.registry.model_name}@champion"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(settings: Settings, model_uri: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
            "--env-manager", "local", "-h", settings.serving.host, "-p", str(port),
            "-w", str(settings.serving.workers)]


def server_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH even when not activated.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    env["MLFLOW_REGISTRY_URI"] = settings.registry_uri
    env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(settings.serving.timeout_seconds)
    env["LOOKALIKE_HOME"] = str(settings.home_path)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _url(settings: Settings, port: int) -> str:
    host = settings.serving.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def wait_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 180.0,
               log_path: Path | None = None) -> None:
    """Poll ``url/ping`` until it answers 200; raise with the server's log tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"model server exited with code {process.returncode}"
                               f"{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"model server at {url} not ready after {timeout:.0f}s"
                       f"{_log_tail(log_path)}")


def _log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- server log ---\n" + "\n".join(text)


def start_server(settings: Settings, model_uri: str | None = None, port: int | None = None,
                 timeout: float | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow models serve`` in the background; return (process, base URL) once
    ``/ping`` answers. The process leads its own process group: stop it with
    :func:`stop_server`. Output goes to ``LOOKALIKE_HOME/logs/serve-<port>.log``."""
    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    model_uri = model_uri or default_model_uri(settings)
    port = port or free_port(settings.serving.host)
    logs = settings.home_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"serve-{port}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(server_command(settings, model_uri, port),
                                   env=server_env(settings), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    url = _url(settings, port)
    process.log_path = log_path  # type: ignore[attr-defined]
    try:
        wait_ready(url, process, timeout or settings.serving.startup_timeout_seconds, log_path)
    except BaseException:
        stop_server(process)
        raise
    log.info("model server %s ready at %s (pid %s)", model_uri, url, process.pid)
    return process, url


def stop_server(process: subprocess.Popen, grace: float = 10.0) -> int | None:
    """SIGTERM the server's process group (uvicorn and its workers), SIGKILL after ``grace``."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(grace)
    return process.returncode


def serve(settings: Settings, model_uri: str | None = None, port: int | None = None) -> dict:
    """Run the REST server in the foreground until it exits or Ctrl-C / SIGTERM."""
    from lookalike.tracking import configure_mlflow

    configure_mlflow(settings)
    model_uri = model_uri or default_model_uri(settings)
    port = port or settings.serving.port
    command = server_command(settings, model_uri, port)
    print(f"serving {model_uri} at {_url(settings, port)} (Ctrl-C stops)", file=sys.stderr)
    process = subprocess.Popen(command, env=server_env(settings), start_new_session=True)

    def forward(signum, _frame):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if process.poll() is None:
            stop_server(process)
    return {"model_uri": model_uri, "url": _url(settings, port), "returncode": code}


def post_json(url: str, payload: dict, timeout: float = 30.0) -> tuple[int, Any]:
    """POST ``payload`` to ``url``; (status, parsed JSON or text). Small stdlib client."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", errors="replace")

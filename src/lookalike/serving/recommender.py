"""The serving logic behind the REST endpoint: request checks, embedding, search, response.

:class:`Recommender` is what the ``lookalike`` pyfunc (:mod:`lookalike.serving.pyfunc`) runs for
every request, in ``mlflow models serve`` and in ``spark_udf`` alike.

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
                                                    (nor other photos of the same product)
include_images boolean false                        add ``image``: base64 PNG thumbnail
                                                    (rows x k at most
                                                    ``serving.max_answer_images``)
============== ======= ============================ =========================================

Response: ``{"predictions": [...]}``, one record per neighbour, ordered by query then rank:
``query`` (long: 0-based row of the request), ``rank`` (long, 1 = nearest), ``product_id``
(string), ``category`` (string), ``title`` (string or null), ``distance`` (double: cosine
distance ``1 - cos`` for cosine models, euclidean for l2), ``group_id`` (string: the product
the photo shows, its own product_id when the catalogue gives no group), and ``image`` (string,
only with ``include_images``). A query with fewer matching products returns fewer rows.

**One row per product.** When the catalogue has several photos of a product (a shared
``group_id``), the answer lists the product once, with its nearest photo: the search asks the
index for more neighbours than ``k`` (``k`` x the largest group, at most 4, doubling while
products are missing) and keeps the first photo of each group.

Errors: every invalid request -- bad base64, bytes that are not an image, unsupported format,
image over ``serving.max_image_bytes`` / ``serving.max_pixels`` / ``serving.max_decode_bytes``,
images that together would cost more than ``serving.max_request_decode_bytes`` to decode,
unknown product_id or category, k outside 1..max_k, a row with both or neither of
image/product_id, no rows, more than ``serving.max_batch`` rows, more images than
``serving.max_answer_images`` -- is answered HTTP 400 with
``{"error_code": "INVALID_PARAMETER_VALUE", "message": "..."}`` and the server keeps serving.

Example::

    curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d '{
      "dataframe_records": [{"product_id": "fmnist-test-00042"},
                            {"image": "iVBORw0KGgoAAAANSUhEUgAA..."}],
      "params": {"k": 5, "category": "Sneaker"}}'

Servers: :mod:`lookalike.serving.server`.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lookalike.config import Settings

OUTPUT_COLUMNS = ["query", "rank", "product_id", "category", "title", "distance", "group_id"]


class ConsistencyError(RuntimeError):
    """The packaged embedding model and index do not belong together."""


def _timed_out(seconds: float):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    return MlflowException(f"request not done within the server's {seconds:g} s timeout; "
                           "its work was stopped", error_code=TEMPORARILY_UNAVAILABLE)


def _bad_request(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def default_params(settings: Settings) -> dict[str, Any]:
    return {"k": int(settings.serving.default_k), "category": "", "exclude_self": True,
            "include_images": False, "look": False}


EF_SEARCH_ENV = "LOOKALIKE_EF_SEARCH"
ENGINE_ENV = "LOOKALIKE_SERVING_ENGINE"


def limits_from(settings: Settings) -> dict[str, Any]:
    """The request limits baked into a packaged model (serving section of the settings)."""
    return {"default_k": settings.serving.default_k, "max_k": settings.serving.max_k,
            "ef_search": settings.serving.ef_search, "engine": settings.serving.engine,
            "max_body_bytes": settings.serving.max_body_bytes,
            "max_batch": settings.serving.max_batch,
            "max_image_bytes": settings.serving.max_image_bytes,
            "max_pixels": settings.serving.max_pixels,
            "max_decode_bytes": settings.serving.max_decode_bytes,
            "max_request_decode_bytes": settings.serving.max_request_decode_bytes,
            "max_answer_images": settings.serving.max_answer_images,
            "allowed_formats": list(settings.catalogue.allowed_formats),
            "look": settings.look.as_limits()}


# Limits of models packaged before these settings existed.
LEGACY_LIMITS = {"max_decode_bytes": 50_000_000, "max_request_decode_bytes": 200_000_000,
                 "max_answer_images": 100}
# The scoring server answers 504 after this many seconds (mlflow's own default is 60).
REQUEST_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"


def check_consistency(info: dict, index) -> None:
    """Raise :class:`ConsistencyError` unless ``index`` was built for the model ``info`` describes."""
    dim = int(info.get("embedding_size", -1))
    if index.dim != dim:
        raise ConsistencyError(f"index dimension {index.dim} != embedding model dimension {dim}: "
                               "the index was built by another model; rerun build-index")
    built_by = index.provenance.model_version if index.provenance else None
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

    def __init__(self, model_dir: str | Path, index_dir: str | Path, products_dir: str | Path,
                 limits: dict[str, Any]):
        from lookalike.index import load_index
        from lookalike.learning.model import load_embedding_model
        from lookalike.serving.catalogue_file import ServingCatalogue

        self.limits = {**LEGACY_LIMITS, **limits}
        self.look = self.limits.get("look") or {"enabled": False}
        # Work for a request stops at the server's timeout: its client has had a 504 by then.
        self.timeout = float(os.environ.get(REQUEST_TIMEOUT_ENV) or 60)
        engine = os.environ.get(ENGINE_ENV) or self.limits.get("engine") or "tensorflow"
        # The scoring server's environment says how many threads a worker may use.
        threads = int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 1)
        self.model = load_embedding_model(model_dir, engine, threads)
        self.index = load_index(index_dir)
        check_consistency(self.model.info, self.index)
        ef_search = int(os.environ.get(EF_SEARCH_ENV) or self.limits.get("ef_search") or 0)
        if ef_search > 0:
            # Per deployment, no rebuild: the beam width is a search-time parameter.
            self.index.set_search_params(ef_search=ef_search)
        self.catalogue = ServingCatalogue(products_dir)
        # The scoring server runs requests in a thread pool: one request's decoding and
        # inference at a time per worker keeps its share of the cores busy instead of
        # thrashing (BENCHMARKS.md), and bounds its memory to one request's images.
        self._inference = threading.Lock()
        self.categories = sorted(self.index.categories())
        self._category_set = set(self.categories)
        self.size, self.channels = self.model.image_size, self.model.channels
        self._detector, self._detector_error = None, None
        if self.look.get("enabled"):
            self._load_detector()
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
        look = _as_bool(params.get("look", False), "look")
        if look and not self.look.get("enabled"):
            raise _bad_request("look=true needs a model packaged with look.enabled: true "
                               "(and the lookalike[look] extra where it is served)")
        if look and self._detector is None:
            raise _bad_request(f"look=true is not available here: {self._detector_error}")
        return k, category, exclude_self, include_images, look

    def _load_detector(self) -> None:
        """The garment detector, made once at load; if it cannot be (the extra is missing),
        look requests say why and every other request is served."""
        from lookalike.look import make_detector

        try:
            self._detector = make_detector(self.look["detector"], self.look)
        except ImportError as error:
            self._detector_error = str(error)

    def _check_answer_size(self, n: int, k: int, include_images: bool) -> None:
        """The answer's size is bounded before any work: rows x k records, and with
        include_images at most ``max_answer_images`` thumbnails."""
        most = self.limits["max_answer_images"]
        if include_images and n * k > most:
            raise _bad_request(f"include_images answers at most {most} images: {n} rows x k={k} "
                               f"= {n * k}; ask for fewer rows or a smaller k, or fetch images "
                               "for the products you show")

    def _image_bytes(self, text: Any, row: int) -> bytes:
        """A row's image as bytes, from base64 (a ``data:`` URL prefix is allowed)."""
        if isinstance(text, (bytes, bytearray)):
            return bytes(text)
        text = str(text).strip()
        if text.startswith("data:"):
            text = text.partition(",")[2]
        text = "".join(text.split())
        # Refuse oversized payloads before allocating their decoded bytes.
        if len(text) > (self.limits["max_image_bytes"] + 2) // 3 * 4 + 4:
            raise _bad_request(f"row {row}: image is larger than "
                               f"{self.limits['max_image_bytes']} bytes")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _bad_request(f"row {row}: image is not valid base64") from None

    def _checked(self, function, data: bytes, row: int, *args):
        """``function(data, size, ...)`` of lookalike.preprocessing, its rejections as 400s."""
        from lookalike.preprocessing import ImageRejected

        try:
            return function(data, self.size, *args)
        except ImageRejected as rejected:
            raise _bad_request(f"row {row}: image rejected ({rejected.reason}): "
                               f"{rejected.detail}") from None
        except Exception as error:  # noqa: BLE001 - any decoder failure is the client's input
            raise _bad_request(f"row {row}: image could not be decoded: {error}") from None

    def _checked_request(self, images: list, rows: list[int], size: int
                         ) -> tuple[list[bytes], tuple]:
        """The rows' image bytes, every header checked and the request's whole decoding cost
        (decoding for ``size`` px) bounded, before the first pixel is decoded; and the header
        limits, for the decoding that follows."""
        from lookalike.preprocessing import checked_decode_cost

        limits = self.limits
        header = (limits["max_image_bytes"], limits["max_pixels"], limits["allowed_formats"])
        data = [self._image_bytes(images[row], row) for row in rows]
        cost = sum(self._checked(lambda blob, _size, *rest: checked_decode_cost(
                       blob, size, *rest), blob, row, *header, limits["max_decode_bytes"])
                   for blob, row in zip(data, rows))
        if cost > limits["max_request_decode_bytes"]:
            raise _bad_request(f"the request's images would take about {cost // 1_000_000} MB "
                               f"to decode, over the limit of "
                               f"{limits['max_request_decode_bytes'] // 1_000_000} MB per "
                               "request: send fewer images per request")
        return data, header

    def _model_inputs(self, images: list, rows: list[int], deadline: float) -> np.ndarray:
        """The rows' images as model input (:meth:`_checked_request` first); work stops at
        the deadline."""
        from lookalike.preprocessing import checked_model_input

        limits = self.limits
        data, header = self._checked_request(images, rows, self.size)
        pixels = []
        for blob, row in zip(data, rows):
            if time.monotonic() > deadline:
                raise _timed_out(self.timeout)
            pixels.append(self._checked(checked_model_input, blob, row, self.channels, *header,
                                        limits["max_decode_bytes"]))
        return np.stack(pixels)

    # -- predict ------------------------------------------------------------------------

    def recommend(self, frame: pd.DataFrame, params: dict[str, Any] | None = None
                  ) -> list[dict[str, Any]]:
        """The answer as records, one per neighbour, ordered by query then rank (what the
        scoring server serializes fastest; :func:`as_frame` makes a DataFrame of it)."""
        deadline = time.monotonic() + self.timeout
        k, category, exclude_self, include_images, look = self._params(params)
        if not isinstance(frame, pd.DataFrame):
            raise _bad_request("input must be a table with columns 'image' and/or 'product_id'")
        n = len(frame)
        if n == 0:
            raise _bad_request("empty input: send at least one row with 'image' or 'product_id'")
        if n > self.limits["max_batch"]:
            raise _bad_request(f"too many rows: {n} > max_batch {self.limits['max_batch']}")
        self._check_answer_size(n, k, include_images)
        unknown_columns = sorted(set(frame.columns) - {"image", "product_id"})
        if unknown_columns:
            raise _bad_request(f"unknown columns {unknown_columns}; use 'image' or 'product_id'")
        images = frame["image"].tolist() if "image" in frame else [None] * n
        products = frame["product_id"].tolist() if "product_id" in frame else [None] * n

        vectors = np.empty((n, self.index.dim), dtype=np.float32)
        excludes: list[set[str]] = [set() for _ in range(n)]
        image_rows = []
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
                    excludes[row] = self.catalogue.same_product(pid)
            else:
                image_rows.append(row)
        if look:
            return self._recommend_look(images, image_rows, vectors, excludes, k, category,
                                        exclude_self, include_images, deadline)
        if image_rows:
            if not self._inference.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise _timed_out(self.timeout)
            try:
                vectors[image_rows] = self.model.embed(
                    self._model_inputs(images, image_rows, deadline))
            finally:
                self._inference.release()
        hits = self._search(vectors, k, category, excludes if exclude_self else None)

        return self._records(hits, range(len(hits)), include_images)

    def _records(self, hits, rows, include_images: bool, extra=None) -> list[dict[str, Any]]:
        """The answer's records: per query (its request row ``rows[i]``), per rank."""
        records = []
        catalogue = self.catalogue
        for i, (q, row_hits) in enumerate(zip(rows, hits)):
            for r, (pid, dist) in enumerate(row_hits, start=1):
                record = {"query": q, "rank": r, "product_id": pid,
                          "category": catalogue.category(pid), "title": catalogue.title(pid),
                          "distance": float(dist), "group_id": catalogue.product_key(pid)}
                if extra is not None:
                    record.update(extra[i])
                if include_images:
                    record["image"] = b64(catalogue.thumbnail(pid))
                records.append(record)
        return records

    # -- shop the look --------------------------------------------------------------------

    def _recommend_look(self, images, image_rows, vectors, excludes, k, category, exclude_self,
                        include_images, deadline) -> list[dict[str, Any]]:
        """``look=true``: each image row answered per garment found on the person in it
        (``garment``, ``box`` in the original's pixels), or whole when there is none; product
        rows whole. Each garment searches the categories ``look.garments`` maps it to (those
        the catalogue has), unless the request names a category."""
        from lookalike.look import WHOLE

        if len(image_rows) > self.look["max_images"]:
            raise _bad_request(f"look=true takes at most {self.look['max_images']} images per "
                               f"request, got {len(image_rows)}")
        # (request row, garment, box, index into `found` or None for the row's own vector)
        plan = [(row, WHOLE, None, None) for row in range(len(vectors)) if row not in image_rows]
        found = []
        if image_rows:
            if not self._inference.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise _timed_out(self.timeout)
            try:
                for row, garment, box, pixels in self._look_inputs(images, image_rows, deadline):
                    plan.append((row, garment, box, len(found)))
                    found.append(pixels)
                embedded = self.model.embed(np.stack(found)) if found else None
            finally:
                self._inference.release()
        plan.sort(key=lambda entry: entry[0])  # request order; garments in detector order
        query_vectors = np.stack([vectors[row] if at is None else embedded[at]
                                  for row, _, _, at in plan])
        query_excludes = [excludes[row] for row, *_ in plan] if exclude_self else None
        hits: list = [None] * len(plan)
        by_filter: dict[tuple, list[int]] = {}
        for i, (_, garment, _, _) in enumerate(plan):
            by_filter.setdefault(self._garment_filter(garment, category), []).append(i)
        for categories, members in by_filter.items():
            subset = [query_excludes[i] for i in members] if query_excludes else None
            for i, row_hits in zip(members, self._search_any(query_vectors[members], k,
                                                             categories, subset)):
                hits[i] = row_hits
        extra = [{"garment": garment, "box": box} for _, garment, box, _ in plan]
        return self._records(hits, [row for row, *_ in plan], include_images, extra)

    def _look_inputs(self, images, rows, deadline):
        """(row, garment, box, model input) per garment found, or the row whole (box: the
        whole picture) when no person wears any. Headers and the request's decoding cost are
        checked first, as for plain queries."""
        from lookalike.look import WHOLE
        from lookalike.look.regions import region_input, scaled_box
        from lookalike.preprocessing import checked_model_input, checked_picture, upright_size

        limits, side = self.limits, int(self.look["max_side"])
        data, header = self._checked_request(images, rows, max(side, self.size))
        for blob, row in zip(data, rows):
            if time.monotonic() > deadline:
                raise _timed_out(self.timeout)
            picture = self._checked(lambda b, _size, *rest: checked_picture(b, side, *rest),
                                    blob, row, *header, limits["max_decode_bytes"])
            width, height = upright_size(blob)
            look = self._detector.find(picture)
            if look is None:
                yield row, WHOLE, [0, 0, width, height], self._checked(
                    checked_model_input, blob, row, self.channels, *header,
                    limits["max_decode_bytes"])
                continue
            scale_x, scale_y = width / picture.width, height / picture.height
            for region in look.regions:
                yield (row, region.garment, scaled_box(region.box, scale_x, scale_y),
                       region_input(picture, region, look.mask, self.size, self.channels))

    def _garment_filter(self, garment: str, category: str | None) -> tuple[str, ...]:
        """The categories a garment's neighbours come from: the request's, else those
        ``look.garments`` maps it to that the catalogue has; () = any."""
        if category is not None:
            return (category,)
        wanted = self.look.get("garments", {}).get(garment) or ()
        return tuple(c for c in wanted if c in self._category_set)

    def _search_any(self, vectors, k, categories: tuple[str, ...], excludes):
        """``k`` neighbours per query from any of ``categories`` (() = any): the nearest of
        each category's own ``k``, merged."""
        if len(categories) <= 1:
            return self._search(vectors, k, categories[0] if categories else None, excludes)
        merged = [[] for _ in range(len(vectors))]
        for category in categories:
            for row, row_hits in enumerate(self._search(vectors, k, category, excludes)):
                merged[row].extend(row_hits)
        return [best_per_product(sorted(row, key=lambda hit: hit[1]), k,
                                 self.catalogue.product_key) for row in merged]


    def _search(self, vectors: np.ndarray, k: int, category: str | None,
                excludes: list[set[str]] | None) -> list[list[tuple[str, float]]]:
        """``k`` neighbours per query, one per product (see "One row per product")."""
        if self.catalogue.largest_group <= 1:
            return self.index.search(vectors, k, category=category, exclude_ids=excludes)
        fetch = min(len(self.index), k * min(self.catalogue.largest_group, 4))
        while True:
            hits = self.index.search(vectors, fetch, category=category, exclude_ids=excludes)
            best = [best_per_product(row, k, self.catalogue.product_key) for row in hits]
            # Bounded: at most log2(len(index) / k) searches, each of at most the whole index.
            if fetch >= len(self.index) or all(
                    len(b) == k or len(row) < fetch for b, row in zip(best, hits)):
                return best
            fetch = min(len(self.index), fetch * 2)


def best_per_product(hits: list[tuple[str, float]], k: int, product_key
                     ) -> list[tuple[str, float]]:
    """The first ``k`` hits of distinct products (hits are nearest first, so each product
    keeps its nearest photo)."""
    seen: set[str] = set()
    out = []
    for pid, dist in hits:
        key = product_key(pid)
        if key not in seen:
            seen.add(key)
            out.append((pid, dist))
            if len(out) == k:
                break
    return out


def as_frame(records: list[dict], include_images: bool = False) -> pd.DataFrame:
    """A :meth:`Recommender.recommend` answer as a DataFrame (the signature's output schema)."""
    columns = OUTPUT_COLUMNS + (["image"] if include_images else [])
    frame = pd.DataFrame.from_records(records, columns=columns)
    return frame.astype({"query": "int64", "rank": "int64", "distance": "float64"})


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


def b64(data: Any) -> str | None:
    """Base64 text of bytes (None stays None): thumbnails in responses and examples."""
    return base64.b64encode(bytes(data)).decode("ascii") if data is not None else None

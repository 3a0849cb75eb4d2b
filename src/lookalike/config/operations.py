"""Settings sections of operations: serving, the model registry, validation before promotion,
deployment to a Databricks serving endpoint, MLflow (see :mod:`lookalike.config.settings`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lookalike.config.schema import require


@dataclass(frozen=True)
class ServingSettings:
    host: str
    port: int
    # uvicorn worker processes; 0 = one per core (at most 4), measured in BENCHMARKS.md.
    workers: int
    # TensorFlow and faiss threads per worker; 0 = cores / workers (at least 1).
    threads_per_worker: int
    # HNSW beam width for this deployment; 0 = the index's own (index.params.hnsw.ef_search).
    # LOOKALIKE_EF_SEARCH in the server's environment overrides both, with no rebuild.
    ef_search: int
    # Requests in progress at once per worker; more get HTTP 503 (lookalike.serving.worker).
    # Connections that have not sent a whole request head do not count.
    max_concurrent_requests: int
    # Open connections per worker; more are closed as they arrive (bounds file descriptors).
    max_connections: int
    # A connection must send its request head within this long of opening, or of its previous
    # answer; else it is closed (uvicorn itself has no such timeout: slowloris).
    header_timeout_seconds: float
    # Request bodies above this get HTTP 413 before they are read whole.
    max_body_bytes: int
    # Inference engine of the served model: tflite (CPU, small batches) or tensorflow (GPU).
    engine: str
    default_k: int
    max_k: int
    max_batch: int
    max_image_bytes: int
    max_pixels: int
    # An image query whose decoding would allocate more than this (read from its header:
    # PNG, WebP and progressive JPEG decode at full size) is refused before it is decoded.
    max_decode_bytes: int
    # ... and a request whose images together would: bounds a request's decoding time.
    max_request_decode_bytes: int
    # include_images answers at most this many thumbnails (rows x k).
    max_answer_images: int
    timeout_seconds: int
    # How long start_server waits for /ping (model + index load) before giving up.
    startup_timeout_seconds: int
    # Longest side of the PNG thumbnails packaged for include_images.
    thumbnail_size: int

    def validate(self, key: str) -> None:
        require(self.startup_timeout_seconds > 0, f"{key}.startup_timeout_seconds", "must be > 0")
        require(8 <= self.thumbnail_size <= 1024, f"{key}.thumbnail_size",
                 "must be between 8 and 1024")
        require(0 < self.port < 65536, f"{key}.port", "must be a TCP port (1-65535)")
        require(self.workers >= 0, f"{key}.workers", "must be >= 0 (0 = one per core)")
        require(self.threads_per_worker >= 0, f"{key}.threads_per_worker",
                "must be >= 0 (0 = cores / workers)")
        require(self.ef_search >= 0, f"{key}.ef_search", "must be >= 0 (0 = the index's own)")
        require(self.max_concurrent_requests > 0, f"{key}.max_concurrent_requests",
                "must be > 0")
        require(self.max_body_bytes > 0, f"{key}.max_body_bytes", "must be > 0")
        require(self.max_connections >= self.max_concurrent_requests, f"{key}.max_connections",
                "must be >= max_concurrent_requests")
        require(0 < self.header_timeout_seconds <= 300, f"{key}.header_timeout_seconds",
                "must be in (0, 300]")
        require(self.max_decode_bytes >= 1_000_000, f"{key}.max_decode_bytes",
                "must be >= 1000000 (1 MB)")
        require(self.max_request_decode_bytes >= self.max_decode_bytes,
                f"{key}.max_request_decode_bytes", "must be >= max_decode_bytes")
        require(self.max_answer_images >= 1, f"{key}.max_answer_images", "must be >= 1")
        require(self.engine in ("tflite", "tensorflow"), f"{key}.engine",
                "must be 'tflite' or 'tensorflow'")
        require(self.max_k > 0, f"{key}.max_k", "must be > 0")
        require(0 < self.default_k <= self.max_k, f"{key}.default_k", "must be in (0, max_k]")
        # MLflow's request timeout: 0 would answer every request, /ping too, with 504.
        require(self.timeout_seconds > 0, f"{key}.timeout_seconds", "must be > 0")
        require(self.max_batch > 0, f"{key}.max_batch", "must be > 0")
        require(self.max_image_bytes > 0, f"{key}.max_image_bytes", "must be > 0")
        require(self.max_pixels > 0, f"{key}.max_pixels", "must be > 0")


@dataclass(frozen=True)
class LookSettings:
    """Shop the look (lookalike.look): requests with ``look: true`` answered per garment."""
    # Packaged into the model: a model without it answers look=true with HTTP 400, and needs
    # no mediapipe where it is served.
    enabled: bool
    detector: str                    # a registered garment detector (lookalike.look.registry)
    min_visibility: float            # landmarks seen at least this surely count
    require_face: bool               # a "person" without a face is a garment on a hanger
    max_side: int                    # the detector sees the photo at most this big (px)
    max_images: int                  # look=true: image rows per request
    # garment (top, bottom, shoes) -> the catalogue categories its lookalikes come from; the
    # ones a catalogue lacks are ignored, none left = any category.
    garments: dict

    def validate(self, key: str) -> None:
        from lookalike.look import GARMENTS, detector_names

        require(self.detector in detector_names(), f"{key}.detector",
                f"unknown detector {self.detector!r}; registered: {detector_names()}")
        require(0.0 <= self.min_visibility <= 1.0, f"{key}.min_visibility", "must be in [0, 1]")
        require(64 <= self.max_side <= 4096, f"{key}.max_side", "must be in [64, 4096]")
        require(self.max_images >= 1, f"{key}.max_images", "must be >= 1")
        bad = sorted(set(self.garments) - set(GARMENTS))
        require(not bad, f"{key}.garments", f"unknown garments {bad}; known: {list(GARMENTS)}")
        require(all(isinstance(v, (list, tuple)) and all(isinstance(c, str) for c in v)
                    for v in self.garments.values()), f"{key}.garments",
                "each garment maps to a list of category names")

    def as_limits(self) -> dict:
        """What a packaged model keeps of it (lookalike.serving.recommender)."""
        return {"enabled": self.enabled, "detector": self.detector,
                "min_visibility": self.min_visibility, "require_face": self.require_face,
                "max_side": self.max_side, "max_images": self.max_images,
                "garments": {g: list(c) for g, c in self.garments.items()}}


@dataclass(frozen=True)
class RegistrySettings:
    model_name: str
    promotion_metric: str
    # Champion is replaced only if challenger >= champion - tolerance.
    promotion_tolerance: float
    # A version must have passed `lookalike validate` (lookalike.serving.validation) first.
    require_validation: bool

    def validate(self, key: str) -> None:
        require(bool(self.model_name), f"{key}.model_name", "must not be empty")
        require(self.promotion_tolerance >= 0, f"{key}.promotion_tolerance", "must be >= 0")
        # Promotion chooses a model: on validation data, never on the test split.
        require(not self.promotion_metric.startswith("test_"), f"{key}.promotion_metric",
                f"{self.promotion_metric!r} is a test-split figure; choose a val_ metric")


@dataclass(frozen=True)
class ValidationSettings:
    """The checks `lookalike validate` runs on a packaged version before promotion."""
    # Environment of the fresh-environment prediction (mlflow.models.predict).
    env_manager: str
    sample_size: int                 # catalogue images queried for index/model consistency
    min_self_recall: float           # share of them that must find themselves at rank 1
    latency_queries: int
    max_latency_p50_ms: float        # a sanity bound, not a benchmark (see BENCHMARKS.md)

    def validate(self, key: str) -> None:
        require(self.env_manager in ("uv", "virtualenv", "local", "conda"),
                f"{key}.env_manager", "must be uv, virtualenv, local or conda")
        require(self.sample_size > 0, f"{key}.sample_size", "must be > 0")
        require(0.0 <= self.min_self_recall <= 1.0, f"{key}.min_self_recall", "must be in [0, 1]")
        require(self.latency_queries > 0, f"{key}.latency_queries", "must be > 0")
        require(self.max_latency_p50_ms > 0, f"{key}.max_latency_p50_ms", "must be > 0")


@dataclass(frozen=True)
class DeploySettings:
    """The Databricks model serving endpoint that `lookalike deploy` points at the champion."""
    endpoint_name: str
    workload_size: str              # Small | Medium | Large
    workload_type: str              # CPU | GPU_SMALL | ...
    scale_to_zero: bool
    wait_seconds: int               # wait this long for the endpoint to be ready (0 = no wait)
    # Who may query the endpoint (CAN_QUERY): group names, or service principals' application
    # ids (e.g. the demo app's); set by each bundle target.
    query_principals: tuple[str, ...]

    def validate(self, key: str) -> None:
        # Databricks' rules, checked before a deploy call fails on them.
        require(bool(re.fullmatch(r"[^\W_][\w-]{0,62}", self.endpoint_name))
                and not self.endpoint_name.startswith("databricks-"), f"{key}.endpoint_name",
                f"{self.endpoint_name!r}: letters, digits, - and _, at most 63, not databricks-*")
        require(bool(re.fullmatch(r"CPU|(MULTI)?GPU_[A-Z0-9_]+", self.workload_type)),
                f"{key}.workload_type", f"{self.workload_type!r}: CPU, or a GPU_* type")
        require(self.workload_size in ("Small", "Medium", "Large"), f"{key}.workload_size",
                "must be Small, Medium or Large")
        require(self.wait_seconds >= 0, f"{key}.wait_seconds", "must be >= 0")


@dataclass(frozen=True)
class MlflowSettings:
    # Empty = sqlite under LOOKALIKE_HOME (MLflow 3 refuses a plain file store); on
    # Databricks "databricks" is used automatically.
    tracking_uri: str
    registry_uri: str
    experiment: str

    def validate(self, key: str) -> None:
        require(bool(self.experiment), f"{key}.experiment", "must not be empty")

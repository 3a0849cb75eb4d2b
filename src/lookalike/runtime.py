"""Where this process runs: on a Databricks cluster or not, and what that changes for files.

No imports from the rest of the package, so settings, Spark and MLflow wiring can all ask.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Unity Catalog Volumes are mounted here on a cluster; the workspace rehearsal
# (tests/rehearsal) maps them to a local folder with LOOKALIKE_VOLUMES_ROOT.
VOLUMES_ROOT_ENV = "LOOKALIKE_VOLUMES_ROOT"


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def volumes_root() -> Path:
    return Path(os.environ.get(VOLUMES_ROOT_ENV) or "/Volumes")


def volume_of(path: str | Path) -> tuple[str, str, str] | None:
    """(catalog, schema, volume) of a ``/Volumes/<catalog>/<schema>/<volume>/...`` path."""
    try:
        parts = Path(str(path)).relative_to(volumes_root()).parts
    except ValueError:
        return None
    return (parts[0], parts[1], parts[2]) if len(parts) >= 3 else None


def prefer_keras_2(environ: dict | None = None) -> bool:
    """With TensorFlow >= 2.16 (Keras 3 by default; DBR 15.4 LTS ML ships 2.16 with tf-keras),
    make ``tf.keras`` the tf-keras package (Keras 2), which TF Similarity needs. Call before
    TensorFlow is imported; True if it set the switch. TF 2.15 is Keras 2 already."""
    from importlib.metadata import PackageNotFoundError, version

    environ = os.environ if environ is None else environ
    try:
        major, minor = (int(p) for p in version("tensorflow").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    if (major, minor) < (2, 16):
        return False
    environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    return True


# TensorFlow's switch for its oneDNN kernels (TF >= 2.9 reads it when it is first imported).
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn(environ: dict | None = None) -> bool:
    """Turn on TensorFlow's oneDNN CPU kernels unless the environment already decides
    (``TF_ENABLE_ONEDNN_OPTS=0`` keeps them off). Call before TensorFlow is imported; True if it
    set the switch. TensorFlow turns them on by itself only on CPUs with AVX512-VNNI, -BF16 or
    AMX; on an AVX2-only CPU (the project's 2-core AMD EPYC host) they fine-tune
    EfficientNet-Lite1 about 2.0 x as fast and run it frozen about 1.8 x (BENCHMARKS.md,
    "TensorFlow's oneDNN kernels"). Results differ only by float round-off."""
    environ = os.environ if environ is None else environ
    if environ.get(ONEDNN_ENV, "").strip():
        return False
    environ[ONEDNN_ENV] = "1"
    return True


def tensorflow_environment() -> dict[str, str]:
    """The switches this process chose for TensorFlow (:func:`prefer_keras_2`,
    :func:`prefer_onednn`), for workers that start without the driver's environment (a
    cluster's tuning trials)."""
    return {name: os.environ[name] for name in ("TF_USE_LEGACY_KERAS", ONEDNN_ENV)
            if name in os.environ}


def local_scratch() -> Path:
    """A folder on this machine's own disk. Volumes take whole-file writes only (no appends,
    no random writes), so logs and other appended files live here on a cluster."""
    root = Path("/local_disk0/tmp") if Path("/local_disk0").is_dir() else Path(tempfile.gettempdir())
    return root / "lookalike"


def cpu_count() -> int:
    """Cores this process may run on (its affinity: a container's or a task's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1

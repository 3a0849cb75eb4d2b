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

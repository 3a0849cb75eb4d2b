"""The embedding model of a training run, as a local folder: downloaded once, loaded once.

Jobs after training (embed, build-index, package) name a model by its training run id; this
module turns that into ``LOOKALIKE_HOME/models/<run_id>/embedding_model`` and a per-process cache
of loaded models (Spark reuses Python workers across tasks).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from lookalike.config import Settings

log = logging.getLogger(__name__)

# Loaded embedding models per Python process.
_MODEL_CACHE: dict[tuple[str, str], Any] = {}  # (directory, precision) -> model


def models_cache_dir(settings: Settings) -> Path:
    return settings.home_path / "models"


def resolve_model(settings: Settings, run_id: str | None = None) -> tuple[str, Path]:
    """The training run (given or latest) and a local folder holding its embedding model.

    The artifact is downloaded once into ``LOOKALIKE_HOME/models/<run_id>/`` and reused.
    """
    import mlflow

    from lookalike.learning.model import INFO_FILE
    from lookalike.tracking import MODEL_ARTIFACT, require_run

    run = require_run(settings, "train", run_id)
    run_id = run.info.run_id
    target = models_cache_dir(settings) / run_id
    local = target / MODEL_ARTIFACT
    if not (local / INFO_FILE).exists():
        staging = target.with_name(f".{run_id}-{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True, exist_ok=True)
        try:
            downloaded = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=MODEL_ARTIFACT, dst_path=str(staging)))
        except Exception as error:  # noqa: BLE001 - re-raised with context
            shutil.rmtree(staging, ignore_errors=True)
            raise ValueError(f"training run {run_id} has no '{MODEL_ARTIFACT}' artifact "
                             f"({error})") from error
        if not (downloaded / INFO_FILE).exists():
            shutil.rmtree(staging, ignore_errors=True)
            raise ValueError(f"artifact '{MODEL_ARTIFACT}' of run {run_id} has no {INFO_FILE}")
        target.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(local, ignore_errors=True)
        os.replace(downloaded, local)
        shutil.rmtree(staging, ignore_errors=True)
    return run_id, local


def convert_once(model_dir: Path) -> bool:
    """Write the TensorFlow Lite conversion of a downloaded model beside it
    (:data:`lookalike.learning.engines.CONVERTED_FILE`) unless it is there already: the nightly
    refresh packages the champion's training run again, and then reuses the file instead of
    converting the same network each night (8-11 s for EfficientNet-Lite1 in the workspace
    rehearsal). True if the file is there now. False if the network does not convert (its
    loader tries again, falls back to TensorFlow and says why) or the file cannot be written
    (it is only a speed-up)."""
    from lookalike.learning.engines import CONVERTED_FILE, convert
    from lookalike.learning.model import SAVED_MODEL_DIR

    target = Path(model_dir) / CONVERTED_FILE
    if target.is_file():
        return True
    try:
        content = convert(Path(model_dir) / SAVED_MODEL_DIR)
    except Exception:  # noqa: BLE001 - see above: the loader falls back to TensorFlow
        return False
    # Whole-file write, then rename: no reader sees half a file, Volumes take no appends, and
    # the partial file lives outside the model folder, which is packaged as it is.
    partial = Path(model_dir).parent / f".{CONVERTED_FILE}.{uuid.uuid4().hex[:8]}"
    try:
        partial.write_bytes(content)
        os.replace(partial, target)
    except OSError as error:
        log.warning("could not keep the TensorFlow Lite conversion at %s (%s): the next "
                    "package of this run converts again", target, error)
        return False
    finally:
        partial.unlink(missing_ok=True)
    return True


def is_cached(directory: str, precision: str = "float32") -> bool:
    return (directory, precision) in _MODEL_CACHE


def cached_embedding_model(directory: str, precision: str = "float32"):
    """``load_embedding_model(directory, precision=precision)``, once per process."""
    model = _MODEL_CACHE.get((directory, precision))
    if model is None:
        from lookalike.learning.model import load_embedding_model

        model = _MODEL_CACHE[(directory, precision)] = load_embedding_model(
            directory, precision=precision)
    return model


def model_distance(info: dict, settings: Settings) -> str:
    return str(info.get("distance") or settings.model.distance)


def read_info(model_dir: Path) -> dict:
    from lookalike.learning.model import INFO_FILE

    return json.loads((Path(model_dir) / INFO_FILE).read_text(encoding="utf-8"))

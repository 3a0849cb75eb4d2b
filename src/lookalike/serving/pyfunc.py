"""The ``lookalike`` MLflow pyfunc: embedding SavedModel + ANN index + product metadata.

:class:`LookalikeModel` wraps :class:`~lookalike.serving.recommender.Recommender`;
:func:`log_lookalike_model` logs it (artifacts, code, pinned requirements, a signature inferred
from a real prediction) into the active MLflow run.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from lookalike.config import Settings
from lookalike.learning.engines import CONVERTED_FILE
from lookalike.serving.recommender import (Recommender, as_frame, b64, default_params,
                                           limits_from)

# Artifact keys of the pyfunc (folder names under <model>/artifacts/).
ARTIFACT_MODEL = "embedding_model"
ARTIFACT_INDEX = "index"
ARTIFACT_PRODUCTS = "products"  # lookalike.serving.catalogue_file
DEFAULT_MAX_BODY_BYTES = 16_000_000  # models packaged before the setting existed


class LookalikeModel(PythonModel):
    """``mlflow.pyfunc`` wrapper of :class:`Recommender`; see the module docstring for I/O."""

    def __init__(self, limits: dict[str, Any]):
        self.limits = dict(limits)
        self.recommender: Recommender | None = None

    def load_context(self, context) -> None:
        from lookalike.runtime import prefer_keras_2, prefer_onednn
        from lookalike.serving.worker import (enable_nodelay, guard_connections,
                                              guard_requests, server_limits)

        prefer_keras_2()  # before TensorFlow loads: a 2.16+ serving environment (tf-keras)
        prefer_onednn()  # the TensorFlow engine on a CPU (TFLite has its own kernels)
        # In each scoring-server worker, before it serves: see lookalike.serving.worker.
        server = server_limits()
        enable_nodelay()
        guard_requests(self.limits.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
                       server["max_concurrent_requests"])
        guard_connections(server["header_timeout_seconds"], server["max_connections"])
        artifacts = context.artifacts
        self.recommender = Recommender(artifacts[ARTIFACT_MODEL], artifacts[ARTIFACT_INDEX],
                                       artifacts[ARTIFACT_PRODUCTS], self.limits)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> list[dict[str, Any]]:
        return self.recommender.recommend(model_input, params)


# What a model packaged with look.enabled needs besides (the [look] extra's pins).
LOOK_REQUIREMENTS = ("mediapipe", "jax", "jaxlib", "opencv-contrib-python")


def _requirements(look: bool = False) -> list[str]:
    from importlib import metadata

    import mlflow

    # mlflow.__version__, not the distribution's: DBR 15.4 LTS ML has only mlflow-skinny.
    pins = [f"mlflow=={mlflow.__version__}"]
    # Everything the pickled model and its code need at load time, cloudpickle (which
    # pickled the PythonModel) included; pinned to what packaged it. tf-keras where it is
    # installed: TensorFlow >= 2.16 needs it for Keras 2 (lookalike.runtime.prefer_keras_2).
    for name in ("cloudpickle", "tensorflow", "tf-keras", "faiss-cpu", "numpy", "pandas",
                 "pyarrow", "pillow", "pyyaml"):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            if name != "tf-keras":
                pins.append(name)
    for name in LOOK_REQUIREMENTS if look else ():
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise RuntimeError("look.enabled: true packages a model that needs mediapipe: "
                               "pip install 'lookalike[look]' first") from None
    return pins


def log_lookalike_model(settings: Settings, model_dir: Path, index_path: Path,
                        products_path: Path, name: str = "model"):
    # products_path: a folder written by lookalike.serving.catalogue_file.write_catalogue.
    """Log the pyfunc into the active run; returns MLflow's ModelInfo.

    The signature (input columns, output columns, params with defaults) is inferred from a real
    prediction on a two-row example (one image query, one product_id query). With the TFLite
    engine, the model converted for that prediction is packaged too
    (:data:`lookalike.learning.engines.CONVERTED_FILE`): loads of the package read it instead
    of converting again.
    """
    import mlflow
    from mlflow.models import infer_signature

    import lookalike

    limits = limits_from(settings)
    recommender = Recommender(model_dir, index_path, products_path, limits)
    first = recommender.index.ids()[0]
    image_b64 = b64(recommender.catalogue.thumbnail(first))
    example = pd.DataFrame({"image": [image_b64, None], "product_id": [None, first]})
    params = default_params(settings)
    output = as_frame(recommender.recommend(example, {**params, "k": 3}))
    # MLflow 2.x (DBR 15.4 LTS ML) cannot infer a text column with no value (no titles): as
    # pandas' string dtype it infers string; MLflow 3 infers the same signature either way.
    output = output.astype({c: "string" for c in output.columns
                            if output[c].dtype == object and output[c].isna().all()})
    with warnings.catch_warnings():
        # "integer columns cannot represent missing values": our ints (query, rank) never are.
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(example, output, params=params)
    code = Path(lookalike.__file__).resolve().parent
    staging = Path(tempfile.mkdtemp(prefix="lookalike-package-"))
    # MLflow names an artifact folder after its source: stage them under their artifact names.
    converted = recommender.model.converted
    if converted is not None and not (Path(model_dir) / CONVERTED_FILE).exists():
        model_dir = shutil.copytree(model_dir, staging / ARTIFACT_MODEL)
        (model_dir / CONVERTED_FILE).write_bytes(converted)
    if Path(index_path).name != ARTIFACT_INDEX:
        index_path = shutil.copytree(index_path, staging / ARTIFACT_INDEX)
    if Path(products_path).name != ARTIFACT_PRODUCTS:
        products_path = shutil.copytree(products_path, staging / ARTIFACT_PRODUCTS)
    try:
        return _log_model(mlflow, name, limits, model_dir, index_path, products_path, code,
                          signature, example, params, _requirements(settings.look.enabled))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _log_model(mlflow, name, limits, model_dir, index_path, products_path, code, signature,
               example, params, requirements):
    # MLflow 3 names a logged model `name`; 2.x (DBR 15.4 LTS ML has 2.13) `artifact_path`.
    where = ("name" if "name" in inspect.signature(mlflow.pyfunc.log_model).parameters
             else "artifact_path")
    return mlflow.pyfunc.log_model(
        **{where: name},
        python_model=LookalikeModel(limits),
        artifacts={ARTIFACT_MODEL: str(model_dir), ARTIFACT_INDEX: str(index_path),
                   ARTIFACT_PRODUCTS: str(products_path)},
        code_paths=[str(code)],
        signature=signature,
        input_example=(example, {**params, "k": 3}),
        pip_requirements=requirements,
    )


def packaged_artifacts(model_path: str | Path) -> dict[str, Path]:
    """Local paths of the pyfunc's artifacts (keys ARTIFACT_*) in a downloaded model folder."""
    from mlflow.models import Model

    model_path = Path(model_path)
    flavor = Model.load(str(model_path)).flavors["python_function"]
    return {key: model_path / value["path"] for key, value in flavor["artifacts"].items()}

"""Model/index consistency checks when the pyfunc loads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest


def _model_parts(packaged_model, tmp_path):
    import mlflow

    from lookalike.serving.pyfunc import packaged_artifacts

    local = mlflow.artifacts.download_artifacts(packaged_model.model_uri,
                                                dst_path=str(tmp_path / "model"))
    parts = packaged_artifacts(local)
    # Logged under the pyfunc's own artifact names.
    assert sorted(p.name for p in parts.values()) == sorted(parts)
    return f"{local}/artifacts"


def test_load_context_rejects_index_of_other_dimension(packaged_model, tmp_path):
    import mlflow

    from lookalike.index import load_index, make_index
    from lookalike.serving.pyfunc import LookalikeModel
    from lookalike.serving.recommender import ConsistencyError, limits_from
    from lookalike.tracking import configure_mlflow

    configure_mlflow(packaged_model.settings)
    artifacts = _model_parts(packaged_model, tmp_path)
    good = load_index(f"{artifacts}/index")
    bad = make_index("exact", good.dim + 3, good.distance, provenance=good.provenance)
    bad.add(["x"], np.ones((1, good.dim + 3), np.float32), ["Bag"])
    bad.save(tmp_path / "bad-index")
    mlflow.pyfunc.save_model(
        str(tmp_path / "mismatched"), python_model=LookalikeModel(limits_from(packaged_model.settings)),
        artifacts={"embedding_model": f"{artifacts}/embedding_model",
                   "index": str(tmp_path / "bad-index"),
                   "products.parquet": f"{artifacts}/products.parquet"})
    with pytest.raises(ConsistencyError, match="dimension"):
        mlflow.pyfunc.load_model(str(tmp_path / "mismatched"))


def test_load_context_rejects_index_of_other_model_version(packaged_model, tmp_path):
    from lookalike.index import load_index
    from lookalike.serving.recommender import ConsistencyError, Recommender, limits_from
    from lookalike.tracking import configure_mlflow

    configure_mlflow(packaged_model.settings)
    artifacts = _model_parts(packaged_model, tmp_path)
    index = load_index(f"{artifacts}/index")
    index.provenance = dataclasses.replace(index.provenance, model_version="some-other-run")
    index.save(tmp_path / "other-index")
    with pytest.raises(ConsistencyError, match="model version"):
        Recommender(f"{artifacts}/embedding_model", tmp_path / "other-index",
                    f"{artifacts}/products.parquet", limits_from(packaged_model.settings))

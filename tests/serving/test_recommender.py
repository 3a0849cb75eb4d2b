"""Model/index consistency checks when the pyfunc loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
                   "products": f"{artifacts}/products"})
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
                    f"{artifacts}/products", limits_from(packaged_model.settings))


def test_packaged_catalogue_reads_thumbnails_on_demand(tmp_path):
    from lookalike.serving.catalogue_file import THUMBNAILS_FILE, ServingCatalogue, write_catalogue

    rows = [("p1", "Bag", "red bag", "g1", b"\x89PNG-one"), ("p2", "Coat", None, None, None),
            ("p3", "Bag", "", "g1", b"\x89PNG-three!")]
    assert write_catalogue(iter(rows), tmp_path / "products") == 3
    catalogue = ServingCatalogue(tmp_path / "products")
    assert catalogue.same_product("p1") == {"p1", "p3"} and catalogue.same_product("p2") == {"p2"}
    assert (catalogue.product_key("p3"), catalogue.product_key("p2")) == ("g1", "p2")
    assert catalogue.ids == ["p1", "p2", "p3"] and "p2" in catalogue and "p9" not in catalogue
    assert (catalogue.category("p3"), catalogue.title("p1"), catalogue.title("p3")) == (
        "Bag", "red bag", None)
    assert catalogue.thumbnail("p1") == b"\x89PNG-one"
    assert catalogue.thumbnail("p2") is None and catalogue.thumbnail("p9") is None
    assert catalogue.thumbnail("p3") == b"\x89PNG-three!"
    # Thumbnails stay on disk (memory-mapped), not in a per-worker dict.
    assert isinstance(catalogue._blob, np.memmap)
    assert (tmp_path / "products" / THUMBNAILS_FILE).stat().st_size == len(b"\x89PNG-one") + len(
        b"\x89PNG-three!")


def test_ef_search_per_deployment_and_the_tflite_engine(packaged_model, tmp_path, monkeypatch):
    from lookalike.serving.recommender import EF_SEARCH_ENV, Recommender, limits_from
    from lookalike.tracking import configure_mlflow

    configure_mlflow(packaged_model.settings)
    artifacts = _model_parts(packaged_model, tmp_path)
    limits = {**limits_from(packaged_model.settings), "ef_search": 77, "engine": "tflite"}
    parts = (f"{artifacts}/embedding_model", f"{artifacts}/index", f"{artifacts}/products")
    served = Recommender(*parts, limits)
    assert served.index.params.ef_search == 77 and served.model.engine == "tflite"
    monkeypatch.setenv(EF_SEARCH_ENV, "91")
    assert Recommender(*parts, limits).index.params.ef_search == 91
    reference = Recommender(*parts, {**limits, "engine": "tensorflow"})
    assert reference.model.engine == "tensorflow"
    images = np.random.default_rng(0).random((3, served.size, served.size, served.channels),
                                              dtype=np.float32)
    np.testing.assert_allclose(served.model.embed(images), reference.model.embed(images),
                               atol=1e-5)


def test_the_package_carries_its_tflite_conversion(packaged_model, tmp_path, monkeypatch):
    """Packaging converts once and ships the conversion: loading the package reads it (no
    converter runs), and the SavedModel is loaded only for a batch too large for TFLite."""
    from lookalike.learning import engines
    from lookalike.serving.recommender import Recommender, limits_from
    from lookalike.tracking import configure_mlflow

    configure_mlflow(packaged_model.settings)
    artifacts = _model_parts(packaged_model, tmp_path)
    converted = Path(artifacts) / "embedding_model" / engines.CONVERTED_FILE
    assert converted.stat().st_size > 1000

    def refuse(path):
        raise AssertionError(f"converted {path} again")

    monkeypatch.setattr(engines, "convert", refuse)
    limits = {**limits_from(packaged_model.settings), "engine": "tflite"}
    parts = (f"{artifacts}/embedding_model", f"{artifacts}/index", f"{artifacts}/products")
    served = Recommender(*parts, limits)
    assert served.model.engine == "tflite" and served.model._signature is None
    reference = Recommender(*parts, {**limits, "engine": "tensorflow"})
    images = np.random.default_rng(1).random((5, served.size, served.size, served.channels),
                                              dtype=np.float32)
    expected = reference.model.embed(images)
    np.testing.assert_allclose(served.model.embed(images), expected, atol=1e-5)
    assert served.model._signature is None
    # Larger than the TFLite path's batch: TensorFlow, loaded now.
    np.testing.assert_allclose(served.model.embed(images, batch_size=2), expected, atol=1e-5)
    assert served.model._signature is not None


def test_several_photos_of_a_product_are_answered_once_with_the_nearest(packaged_model, tmp_path):
    """group_id: one row per product (its nearest photo); "more like this" never answers a
    product with its own other photos."""
    from lookalike.index import load_index, make_index
    from lookalike.serving.catalogue_file import write_catalogue
    from lookalike.serving.recommender import Recommender, limits_from
    from lookalike.tracking import configure_mlflow

    configure_mlflow(packaged_model.settings)
    artifacts = _model_parts(packaged_model, tmp_path)
    good = load_index(f"{artifacts}/index")
    # Photos along an arc from p2: g1's two photos nearest, then g3's three, then p4.
    layout = [("p2", None, 0.0), ("p1a", "g1", 0.10), ("p1b", "g1", 0.12), ("p3a", "g3", 0.22),
              ("p3b", "g3", 0.24), ("p3c", "g3", 0.26), ("p4", None, 0.45)]
    vectors = np.zeros((len(layout), good.dim), np.float32)
    for i, (_, _, angle) in enumerate(layout):
        vectors[i, 0], vectors[i, 1] = np.cos(angle), np.sin(angle)
    index = make_index("exact", good.dim, good.distance, provenance=good.provenance)
    index.add([pid for pid, _, _ in layout], vectors, ["Bag"] * len(layout))
    index.save(tmp_path / "index")
    write_catalogue(((pid, "Bag", None, group, None) for pid, group, _ in layout),
                    tmp_path / "products")
    served = Recommender(f"{artifacts}/embedding_model", tmp_path / "index",
                         tmp_path / "products", limits_from(packaged_model.settings))
    import pandas as pd

    answer = served.recommend(pd.DataFrame({"product_id": ["p2", "p1a"]}), {"k": 3})
    by_query = {q: [(r["product_id"], r["group_id"]) for r in answer if r["query"] == q]
                for q in (0, 1)}
    assert by_query[0] == [("p1a", "g1"), ("p3a", "g3"), ("p4", "p4")]
    assert by_query[1] == [("p2", "p2"), ("p3a", "g3"), ("p4", "p4")]  # not p1b: same product
    # More products asked for than exist: every product once, then no more rows.
    everything = served.recommend(pd.DataFrame({"product_id": ["p4"]}), {"k": 10})
    assert [(r["product_id"], r["group_id"]) for r in everything] == [
        ("p3c", "g3"), ("p1b", "g1"), ("p2", "p2")]


def test_work_stops_at_the_server_timeout(packaged_model, tmp_path):
    """Decoding and inference run under one lock per worker; a request that cannot have it
    before the scoring server's timeout (its client got 504) does no work at all."""
    import threading
    import time

    import pandas as pd
    from mlflow.exceptions import MlflowException

    from lookalike.serving.recommender import Recommender, b64, limits_from
    from lookalike.tracking import configure_mlflow

    configure_mlflow(packaged_model.settings)
    artifacts = _model_parts(packaged_model, tmp_path)
    recommender = Recommender(f"{artifacts}/embedding_model", f"{artifacts}/index",
                              f"{artifacts}/products", limits_from(packaged_model.settings))
    recommender.timeout = 0.5
    image = b64(packaged_model.products.iloc[0]["image"])
    query = pd.DataFrame({"image": [image]})
    assert len(recommender.recommend(query, {"k": 2})) == 2
    decoded = []
    original = recommender._image_bytes
    recommender._image_bytes = lambda text, row: decoded.append(row) or original(text, row)
    busy = threading.Event()

    def hold_the_worker():
        with recommender._inference:
            busy.set()
            time.sleep(2)

    holder = threading.Thread(target=hold_the_worker)
    holder.start()
    busy.wait()
    started = time.monotonic()
    with pytest.raises(MlflowException, match="timeout"):
        recommender.recommend(query, {"k": 2})
    assert time.monotonic() - started < 1.5 and decoded == []
    holder.join()

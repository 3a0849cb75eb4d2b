"""The batch-embedding job (and the index built from it): incremental, per model version."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

from lookalike.catalogue.tables import catalogue_table


@pytest.fixture()
def catalogue(embedding_run, spark):
    """(settings, run_id) with a fresh, small Fashion-MNIST catalogue of its own."""
    from lookalike.catalogue.ingest import ingest_fashion_mnist

    run_settings, run_id = embedding_run
    settings = run_settings.replace(catalogue={"database": f"emb{uuid.uuid4().hex[:8]}"})
    ingest_fashion_mnist(spark, settings, limit_per_split=10)
    return settings, run_id


def _embeddings(spark, settings, run_id) -> pd.DataFrame:
    path = str(catalogue_table(settings, "embeddings"))
    return (spark.read.format("delta").load(path).where(f"model_version = '{run_id}'")
            .toPandas().set_index("product_id"))


def test_incremental_embedding_and_index(catalogue, spark):
    from delta.tables import DeltaTable

    from lookalike.catalogue.ingest import ingest_candidates
    from lookalike.catalogue.tables import read_products
    from lookalike.embeddings import embed_catalogue
    from lookalike.index import load_index
    from lookalike.index.build import build_index, index_dir
    from lookalike.learning.artifacts import cached_embedding_model, resolve_model
    from lookalike.preprocessing import batch_to_model_input

    settings, run_id = catalogue
    first = embed_catalogue(settings, run_id=run_id)
    assert (first["embedded"], first["unchanged"], first["removed"]) == (20, 0, 0)
    assert first["model_version"] == run_id
    table = _embeddings(spark, settings, run_id)
    assert len(table) == 20 and len(table.iloc[0]["vector"]) > 0

    again = embed_catalogue(settings, run_id=run_id)
    assert (again["embedded"], again["unchanged"], again["removed"]) == (0, 20, 0)
    assert again["table_version"] == first["table_version"]     # nothing written

    built = build_index(settings, run_id=run_id)
    assert (built["mode"], built["count"]) == ("built", 20)
    assert load_index(index_dir(settings, run_id)).provenance.model_version == run_id

    products = read_products(spark, settings)[0].toPandas().sort_values("product_id")
    changed, removed, donor = products.iloc[2], products.iloc[5], products.iloc[11]
    ingest_candidates(spark, settings, pd.DataFrame({
        "product_id": [changed["product_id"]], "category": [changed["category"]],
        "title": ["changed picture"], "image": [bytes(donor["image"])],
        "source_uri": ["test://changed"]}), "test")
    products_path = str(catalogue_table(settings, "products"))
    DeltaTable.forPath(spark, products_path).delete(f"product_id = '{removed['product_id']}'")

    third = embed_catalogue(settings, run_id=run_id)
    assert (third["embedded"], third["unchanged"], third["removed"]) == (1, 18, 1)
    table = _embeddings(spark, settings, run_id)
    assert len(table) == 19 and removed["product_id"] not in table.index
    row = table.loc[changed["product_id"]]
    assert row["content_hash"] == donor["content_hash"]
    _, model_dir = resolve_model(settings, run_id)
    model = cached_embedding_model(str(model_dir))
    expected = model.embed(batch_to_model_input([bytes(donor["image"])], model.image_size,
                                                model.channels))[0]
    np.testing.assert_allclose(np.asarray(row["vector"]), expected, atol=1e-4)

    updated = build_index(settings, run_id=run_id)
    assert (updated["mode"], updated["count"], updated["added"], updated["removed"]) == \
        ("updated", 19, 1, 1)
    index = load_index(index_dir(settings, run_id))
    assert not index.contains(removed["product_id"])
    everything = index.search(np.asarray(table.loc[changed["product_id"], "vector"]), k=50)[0]
    assert removed["product_id"] not in {pid for pid, _ in everything}
    assert len(everything) == 19
    assert everything[0][0] in (changed["product_id"], donor["product_id"])
    assert everything[0][1] == pytest.approx(0.0, abs=1e-4)

    assert build_index(settings, run_id=run_id)["mode"] == "unchanged"


def test_new_model_version_embeds_everything(catalogue, spark):
    from lookalike.embeddings import embed_catalogue
    from lookalike.index.build import build_index
    from mlflow_runs import copy_training_run

    settings, run_id = catalogue
    assert embed_catalogue(settings, run_id=run_id)["embedded"] == 20
    other = copy_training_run(settings, run_id)
    fresh = embed_catalogue(settings, run_id=other)
    assert (fresh["embedded"], fresh["unchanged"], fresh["model_version"]) == (20, 0, other)
    assert len(_embeddings(spark, settings, run_id)) == 20      # old version untouched
    assert len(_embeddings(spark, settings, other)) == 20
    assert embed_catalogue(settings, run_id=run_id)["embedded"] == 0
    assert build_index(settings, run_id=other)["count"] == 20


def test_embed_without_catalogue_model_run_is_clear_error(embedding_run):
    from lookalike.embeddings import embed_catalogue

    settings, _ = embedding_run
    with pytest.raises(ValueError, match="no MLflow run"):
        embed_catalogue(settings, run_id="0" * 32)


def test_mixed_precision_embedding_needs_a_model_trained_with_it(embedding_run):
    from lookalike.embeddings import embed_catalogue

    settings, run_id = embedding_run
    mixed = settings.replace(embedding={"precision": "mixed"})
    with pytest.raises(ValueError, match="no mixed-precision export"):
        embed_catalogue(mixed, run_id=run_id)


def test_search_time_params_change_without_a_rebuild_and_build_params_rebuild(catalogue):
    from lookalike.embeddings import embed_catalogue
    from lookalike.index import IndexManifest
    from lookalike.index.build import build_index, index_dir

    settings, run_id = catalogue
    embed_catalogue(settings, run_id=run_id)
    assert build_index(settings, run_id=run_id)["mode"] == "built"
    wider = settings.replace(index={"params": {"hnsw": {"ef_search": 300}}})
    assert build_index(wider, run_id=run_id)["mode"] == "unchanged"
    assert IndexManifest.read(index_dir(settings, run_id)).params["ef_search"] == 300
    other_graph = settings.replace(index={"params": {"hnsw": {"m": 8}}})
    assert build_index(other_graph, run_id=run_id)["mode"] == "built"
    assert IndexManifest.read(index_dir(settings, run_id)).params["m"] == 8


def test_deleted_products_leave_embeddings_and_the_index(embedding_run, spark, tmp_path):
    """A file removed from a shop's folder leaves products, then embeddings, then the index."""
    from lookalike.catalogue.ingest import ingest_folder
    from lookalike.embeddings import embed_catalogue
    from lookalike.index import load_index
    from lookalike.index.build import build_index, index_dir

    run_settings, run_id = embedding_run
    settings = run_settings.replace(catalogue={"database": f"del{uuid.uuid4().hex[:8]}"})
    shop = tmp_path / "shop" / "bags"
    shop.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        from imagegen import encode_image
        (shop / f"b{i}.png").write_bytes(encode_image(rng.integers(0, 255, (28, 28), np.uint8)))
    ingest_folder(spark, settings, str(tmp_path / "shop"))
    embed_catalogue(settings, run_id=run_id)
    assert build_index(settings, run_id=run_id)["count"] == 5

    (shop / "b3.png").unlink()
    assert ingest_folder(spark, settings, str(tmp_path / "shop")).deleted == 1
    assert embed_catalogue(settings, run_id=run_id)["removed"] == 1
    updated = build_index(settings, run_id=run_id)
    assert (updated["mode"], updated["count"], updated["removed"]) == ("updated", 4, 1)
    assert not load_index(index_dir(settings, run_id)).contains("bags/b3")


def test_arrow_batches_are_bounded_by_bytes_not_rows():
    from lookalike.embeddings import arrow_rows

    assert arrow_rows(784, 64_000_000) == 10_000           # Fashion-MNIST: Spark's default
    assert arrow_rows(30_000, 64_000_000) == 2_133         # 400 px phone photos
    assert arrow_rows(5_000_000, 64_000_000) == 12         # 20 MP originals
    assert arrow_rows(90_000_000, 64_000_000) == 1 and arrow_rows(0, 10) == 10

"""Packaging a training run: the registered pyfunc, its lineage tags, clear errors."""

from __future__ import annotations

import uuid

import pytest

from mlflow_runs import copy_training_run


def test_package_registers_challenger_with_lineage_tags(packaged_model):
    import mlflow

    from lookalike.tracking import KIND_TAG, configure_mlflow

    settings = packaged_model.settings
    configure_mlflow(settings)
    client = mlflow.MlflowClient()
    name = settings.registry.model_name
    version = client.get_model_version(name, str(packaged_model.version))
    assert version.tags["training_run"] == packaged_model.run_id
    assert int(version.tags["index_size"]) == len(packaged_model.products)
    assert int(version.tags["delta_version"]) >= 0
    assert client.get_model_version_by_alias(name, "challenger").version == version.version
    # The fixture promoted it: the first version becomes champion.
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    assert "first version" in version.tags["lookalike.promotion"]

    package_run = client.get_run(version.tags["package_run"])
    assert package_run.data.tags[KIND_TAG] == "package"
    assert package_run.data.params["training_run_id"] == packaged_model.run_id
    training = client.get_run(packaged_model.run_id)
    assert package_run.data.metrics.keys() >= training.data.metrics.keys()


def test_package_without_index_is_a_clear_error(embedding_run):
    from lookalike.serving.package import package_and_register
    from lookalike.tracking import configure_mlflow

    settings, run_id = embedding_run
    settings = settings.replace(registry={"model_name": f"noindex-{uuid.uuid4().hex[:6]}"})
    configure_mlflow(settings)
    with pytest.raises(ValueError, match="build-index"):
        package_and_register(settings, run_id=copy_training_run(settings, run_id))


def test_a_title_only_change_reaches_the_next_package(embedding_run, spark, tmp_path,
                                                      monkeypatch):
    """... and the next package of the same training run (the nightly refresh) carries the
    first one's TensorFlow Lite conversion, without converting again."""
    import mlflow
    import pandas as pd

    from lookalike.catalogue.ingest import ingest_candidates, ingest_fashion_mnist
    from lookalike.catalogue.tables import read_products
    from lookalike.embeddings import embed_catalogue
    from lookalike.index.build import build_index
    from lookalike.learning import engines
    from lookalike.learning.artifacts import resolve_model
    from lookalike.serving.catalogue_file import ServingCatalogue
    from lookalike.serving.package import package_and_register
    from lookalike.serving.pyfunc import ARTIFACT_MODEL, ARTIFACT_PRODUCTS, packaged_artifacts

    run_settings, run_id = embedding_run
    settings = run_settings.replace(
        catalogue={"database": f"title{uuid.uuid4().hex[:8]}"},
        registry={"model_name": f"title-{uuid.uuid4().hex[:8]}"})
    ingest_fashion_mnist(spark, settings, limit_per_split=5)
    embed_catalogue(settings, run_id=run_id)
    build_index(settings, run_id=run_id)
    package_and_register(settings, run_id=run_id)

    row = read_products(spark, settings)[0].orderBy("product_id").first()
    ingest_candidates(spark, settings, pd.DataFrame({
        "product_id": [row["product_id"]], "category": [row["category"]],
        "title": ["Red canvas tote"], "image": [bytes(row["image"])],
        "source_uri": [row["source_uri"]], "official_split": ["test"]}), "test")
    assert embed_catalogue(settings, run_id=run_id)["embedded"] == 0     # same picture
    assert build_index(settings, run_id=run_id)["mode"] == "unchanged"
    converted = (resolve_model(settings, run_id)[1] / engines.CONVERTED_FILE).read_bytes()

    conversions = []  # recorded, not raised: the converters' callers catch every error
    monkeypatch.setattr(engines, "convert", conversions.append)
    second = package_and_register(settings, run_id=run_id)
    local = mlflow.artifacts.download_artifacts(second["model_uri"], dst_path=str(tmp_path))
    artifacts = packaged_artifacts(local)
    catalogue = ServingCatalogue(artifacts[ARTIFACT_PRODUCTS])
    assert catalogue.title(row["product_id"]) == "Red canvas tote"
    assert conversions == []
    assert (artifacts[ARTIFACT_MODEL] / engines.CONVERTED_FILE).read_bytes() == converted


def test_the_package_pins_mlflow_by_its_module_and_types_empty_text_columns(packaged_model):
    """On DBR 15.4 LTS ML only mlflow-skinny is installed (no `mlflow` distribution), so the
    pin comes from mlflow.__version__; and MLflow 2.13 cannot infer a type for a text column
    with no value (these test products have no titles): the signature still has one."""
    import mlflow
    from mlflow.models import get_model_info

    from lookalike.tracking import configure_mlflow

    settings = packaged_model.settings
    configure_mlflow(settings)
    uri = f"models:/{settings.registry.model_name}/{packaged_model.version}"
    requirements = mlflow.pyfunc.get_model_dependencies(uri)
    assert f"mlflow=={mlflow.__version__}" in open(requirements).read().split()
    outputs = {c.name for c in get_model_info(uri).signature.outputs.inputs}
    assert {"product_id", "category", "title"} <= outputs


def test_a_garment_naming_no_catalogue_category_is_reported():
    """look.garments accepts any names (a catalogue may lack some); one that matches none of
    the catalogue's would answer from any category: packaging says so."""
    from lookalike.serving.package import unmatched_garments

    garments = {"top": ["T-shirt", "Shirt"], "bottom": ["Pantz"], "shoes": []}
    assert unmatched_garments(garments, ["Shirt", "Pants", "Shoes"]) == ["bottom"]
    assert unmatched_garments(garments, []) == ["bottom", "top"]

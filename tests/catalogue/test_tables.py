"""Catalogue tables: locations and versions."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from lookalike.catalogue.tables import CatalogueTable, catalogue_table, delta_version
from lookalike.config import ConfigError


def test_delta_version_from_the_log_without_spark(tmp_path):
    assert delta_version(tmp_path / "nothing") is None
    log = tmp_path / "t" / "_delta_log"
    log.mkdir(parents=True)
    assert delta_version(tmp_path / "t") is None
    for name in ("00000000000000000000.json", "00000000000000000001.json",
                 "00000000000000000010.checkpoint.parquet", "00000000000000000002.json",
                 "_last_checkpoint"):
        (log / name).write_text("{}")
    assert delta_version(tmp_path / "t") == 2


def test_table_locations_are_decided_in_one_place(base_settings):
    settings = base_settings.replace(catalogue={"database": "shop", "products_table": "items"})
    assert str(catalogue_table(settings, "products")).endswith("/warehouse/shop/items")
    assert str(catalogue_table(settings, "embeddings")).endswith("/warehouse/shop/embeddings")
    with pytest.raises(ValueError, match="unknown catalogue table"):
        str(catalogue_table(settings, "orders"))


def test_on_databricks_tables_are_unity_catalog_managed_tables(base_settings, monkeypatch):
    settings = base_settings.replace(catalogue={"catalog": "prod-shop", "database": "lookalike"})
    assert catalogue_table(settings, "products").path is not None      # locally: path tables
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    table = catalogue_table(settings, "products")
    assert (table.name, table.path) == ("`prod-shop`.`lookalike`.`products`", None)
    assert CatalogueTable.from_ref(str(table)) == table
    forced = settings.replace(catalogue={"table_mode": "path"})
    assert catalogue_table(forced, "embeddings").path.endswith("/warehouse/lookalike/embeddings")
    assert CatalogueTable.from_ref("dbfs:/Volumes/a/b/t").path == "dbfs:/Volumes/a/b/t"


def test_table_mode_is_checked(base_settings):
    with pytest.raises(ConfigError, match="table_mode"):
        base_settings.replace(catalogue={"table_mode": "hive"})


def test_managed_tables_hold_the_catalogue_by_name(spark, settings, tmp_path):
    """Ingest, re-ingest and a neighbours-style partition overwrite through metastore names on
    the real local session (its built-in catalog stands in for Unity Catalog)."""
    from imagegen import encode_image

    from lookalike.catalogue.ingest import ingest_folder

    database = f"lookalike_{uuid.uuid4().hex[:8]}"
    managed = settings.replace(catalogue={"table_mode": "managed", "database": database})
    rng = np.random.default_rng(0)
    for category in ("shoes", "shirts"):
        (tmp_path / category).mkdir()
        for i in range(2):
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            (tmp_path / category / f"{i}.png").write_bytes(encode_image(pixels, "PNG"))
    first = ingest_folder(spark, managed, str(tmp_path))
    again = ingest_folder(spark, managed, str(tmp_path))
    assert (first.inserted, again.inserted, again.unchanged) == (4, 0, 4)
    assert again.table_version == first.table_version
    assert spark.table(f"{database}.products").count() == 4
    assert spark.catalog.tableExists(f"{database}.rejects")
    assert not (settings.warehouse_path / database).exists()          # nothing under home

    neighbours = catalogue_table(managed, "neighbours")
    for model, rows in (("m1", 3), ("m2", 2), ("m1", 1)):
        frame = spark.createDataFrame([(str(i), model) for i in range(rows)],
                                      "product_id STRING, model_version STRING")
        neighbours.save(frame.write.format("delta").mode("overwrite")
                        .partitionBy("model_version")
                        .option("replaceWhere", f"model_version = '{model}'"))
    counts = {r["model_version"]: r["count"]
              for r in neighbours.read(spark).groupBy("model_version").count().collect()}
    assert counts == {"m1": 1, "m2": 2}
    assert catalogue_table(managed, "products").version_without_spark() is None


def test_unity_catalog_preparation_creates_schema_and_home_volume(base_settings, tmp_path,
                                                                   monkeypatch):
    """Through the workspace API (here its stand-in, lookalike.workspace.StandIn): the tables'
    schema and the Volume of LOOKALIKE_HOME are created once, before anything writes there;
    a second run finds them. Not covered here: the real Unity Catalog API's answers."""
    from lookalike.catalogue.tables import prepare_unity_catalog
    from lookalike.runtime import volume_of
    from lookalike.workspace import StandIn

    monkeypatch.setenv("LOOKALIKE_VOLUMES_ROOT", str(tmp_path / "Volumes"))
    volumes = tmp_path / "Volumes"
    assert volume_of(volumes / "main/shop/lookalike/models") == ("main", "shop", "lookalike")
    assert volume_of("/home/me/.lookalike") is None
    standin = StandIn(tmp_path / "workspace")
    managed = base_settings.replace(home=str(volumes / "main/shop/lookalike"), catalogue={
        "table_mode": "managed", "catalog": "main", "database": "shop"})
    assert not (volumes / "main").exists()
    assert prepare_unity_catalog(managed, standin) == ["schema main.shop",
                                                       "volume main.shop.lookalike"]
    assert (volumes / "main/shop/lookalike").is_dir()
    posts = [c["path"] for c in standin._load()["calls"] if c["method"] == "POST"]
    assert posts == ["/api/2.1/unity-catalog/schemas", "/api/2.1/unity-catalog/volumes"]
    prepare_unity_catalog(managed, standin)
    assert len([c for c in standin._load()["calls"] if c["method"] == "POST"]) == 2


def test_preparation_without_the_privilege_says_what_to_ask_for(base_settings):
    from lookalike.catalogue.tables import prepare_unity_catalog

    class Refusing:
        def do(self, method, path, **_):
            raise PermissionError("PERMISSION_DENIED: User does not have CREATE SCHEMA")

    managed = base_settings.replace(catalogue={"table_mode": "managed", "catalog": "main",
                                               "database": "shop"})
    with pytest.raises(PermissionError, match="grant the job's run_as identity"):
        prepare_unity_catalog(managed, Refusing())


def test_names_and_values_reach_sql_quoted(spark, base_settings, monkeypatch):
    """Issue 19, item 8: table names and the neighbours' replaceWhere value are quoted and
    escaped, so a backtick or a quote in them is data, never SQL."""
    from lookalike.catalogue.tables import quote_identifier, sql_string

    for value in ("m1", "it's", "a\\\\'b", "x' OR '1'='1"):
        assert spark.sql(f"SELECT {sql_string(value)} AS v").collect()[0]["v"] == value
    assert quote_identifier("we`ird") == "`we``ird`"
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    # The settings refuse such a name at load; the quoting still holds without them.
    with pytest.raises(ConfigError, match="'catalogue.database'.*is not a name"):
        base_settings.replace(catalogue={"catalog": "c", "database": "shop`; DROP"})
    odd = dataclasses.replace(base_settings, catalogue=dataclasses.replace(
        base_settings.catalogue, catalog="c", database="shop`; DROP"))
    assert catalogue_table(odd, "products").name == "`c`.`shop``; DROP`.`products`"

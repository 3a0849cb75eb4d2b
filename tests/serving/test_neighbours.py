"""Batch 'more like this' through the packaged pyfunc into Delta."""

from __future__ import annotations

from lookalike.catalogue.tables import catalogue_table


def test_write_neighbours_for_every_product(packaged_model, spark):
    from lookalike.serving.neighbours import write_neighbours

    settings = packaged_model.settings
    result = write_neighbours(settings, model_uri=packaged_model.model_uri, k=3)
    n = len(packaged_model.products)
    assert (result["products"], result["rows"], result["model_version"]) == \
        (n, 3 * n, packaged_model.run_id)
    path = str(catalogue_table(settings, "neighbours"))
    table = spark.read.format("delta").load(path).toPandas()
    assert len(table) == 3 * n
    assert (table["product_id"] != table["neighbour_id"]).all()
    assert sorted(table.groupby("product_id")["rank"].apply(list).iloc[0]) == [1, 2, 3]
    assert set(table["model_version"]) == {packaged_model.run_id}
    assert set(table["product_id"]) == set(packaged_model.products["product_id"])
    # Rerunning overwrites that model version's rows instead of appending.
    assert write_neighbours(settings, model_uri=packaged_model.model_uri, k=2)["rows"] == 2 * n

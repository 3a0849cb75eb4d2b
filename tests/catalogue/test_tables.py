"""Catalogue tables: locations and versions."""

from __future__ import annotations

import pytest

from lookalike.catalogue.tables import delta_version, table_path


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
    assert table_path(settings, "products").endswith("/warehouse/shop/items")
    assert table_path(settings, "embeddings").endswith("/warehouse/shop/embeddings")
    with pytest.raises(ValueError, match="unknown catalogue table"):
        table_path(settings, "orders")

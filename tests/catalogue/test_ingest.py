"""Ingestion into real Delta tables on a real local SparkSession."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imagegen import encode_image
from lookalike.catalogue.ingest import (
    ingest_candidates,
    ingest_fashion_mnist,
    ingest_folder,
    split_for,
)
from lookalike.catalogue.tables import catalogue_table, read_products


def _image(seed: int, size=(32, 24), fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    return encode_image(rng.integers(0, 255, (*size, 3), dtype=np.uint8), fmt)


def _shop_folder(root: Path) -> Path:
    """A small shop: good images in two category folders plus one of each kind of bad file."""
    for category, seeds in (("shoes", (1, 2, 3)), ("shirts", (4, 5))):
        (root / category).mkdir(parents=True)
        for seed in seeds:
            (root / category / f"item{seed}.png").write_bytes(_image(seed))
    (root / "shirts" / "item6.jpg").write_bytes(_image(6, fmt="JPEG"))
    (root / "shirts" / "item7.webp").write_bytes(_image(7, fmt="WEBP"))
    corrupt = bytearray(_image(9))
    corrupt[len(corrupt) // 2:len(corrupt) // 2 + 64] = bytes(64)   # damaged pixel data
    (root / "shoes" / "corrupt.png").write_bytes(bytes(corrupt))
    (root / "shoes" / "notes.txt").write_bytes(b"not an image at all")
    (root / "shoes" / "truncated.jpg").write_bytes(_image(8, size=(200, 200), fmt="JPEG")[:400])
    (root / "shoes" / "empty.png").write_bytes(b"")
    huge = Image.new("L", (5000, 5000))           # 25 Mpx, over the test limit of 4 Mpx
    huge.save(root / "shoes" / "oversized.png")
    return root


def test_folder_ingest_rejects_exactly_the_bad_files(spark, settings, tmp_path, capsys):
    settings = settings.replace(catalogue={"max_pixels": 4_000_000})
    summary = ingest_folder(spark, settings, str(_shop_folder(tmp_path / "shop")))
    assert (summary.inserted, summary.rejected, summary.unchanged) == (7, 5, 0)
    # Said on the terminal too, with where the rest is.
    said = capsys.readouterr().err
    assert "[ingest] 5 rejected (" in said and ", ...); every file and reason: table" in said

    rejects = (catalogue_table(settings, "rejects").read(spark).toPandas())
    by_file = {Path(uri).name: reason for uri, reason in zip(rejects.source_uri, rejects.reason)}
    assert by_file == {"corrupt.png": "corrupt", "notes.txt": "not_an_image",
                       "truncated.jpg": "truncated",
                       "empty.png": "empty", "oversized.png": "too_many_pixels"}
    assert rejects.detail.str.len().min() > 0

    products, _ = read_products(spark, settings)
    rows = products.toPandas().set_index("product_id")
    assert sorted(rows.index) == ["shirts/item4", "shirts/item5", "shirts/item6", "shirts/item7",
                                  "shoes/item1", "shoes/item2", "shoes/item3"]
    assert set(rows.category) == {"shoes", "shirts"}
    assert rows.loc["shirts/item6", "format"] == "JPEG"
    assert rows.loc["shirts/item7", "format"] == "WEBP"
    assert (rows.loc["shoes/item1", "width"], rows.loc["shoes/item1", "height"]) == (24, 32)
    assert rows.loc["shoes/item1", "image"] == (tmp_path / "shop/shoes/item1.png").read_bytes()

    # A rerun over the same bad files does not duplicate rejects.
    again = ingest_folder(spark, settings, str(tmp_path / "shop"))
    assert (again.inserted, again.unchanged, again.rejected) == (0, 7, 5)
    assert catalogue_table(settings, "rejects").read(spark).count() == 5


def test_a_file_over_the_byte_limit_is_rejected_from_its_size_without_reading(spark, settings,
                                                                             tmp_path):
    """A sparse 3 GB file: reading it would fail (binaryFile refuses files over 2 GB) or take
    minutes; rejected from its listed size, it costs nothing."""
    (tmp_path / "shoes").mkdir()
    (tmp_path / "shoes" / "ok.png").write_bytes(_image(1))
    with open(tmp_path / "shoes" / "huge.png", "wb") as f:
        f.truncate(3 * 1024**3)
    summary = ingest_folder(spark, settings, str(tmp_path))
    assert (summary.inserted, summary.rejected) == (1, 1)
    rejects = catalogue_table(settings, "rejects").read(spark).toPandas()
    huge = rejects[rejects.source_uri.str.endswith("huge.png")].iloc[0]
    assert huge.reason == "too_large" and "(file not read)" in huge.detail
    assert str(3 * 1024**3) in huge.detail


def test_rerun_is_idempotent_and_change_updates_one_row(spark, settings, tmp_path):
    shop = tmp_path / "shop"
    for i in range(5):
        (shop / "bags").mkdir(parents=True, exist_ok=True)
        (shop / "bags" / f"b{i}.png").write_bytes(_image(i))
    first = ingest_folder(spark, settings, str(shop))
    version_after_first = catalogue_table(settings, "products").version(spark)
    before = read_products(spark, settings)[0].toPandas().set_index("product_id").sort_index()

    second = ingest_folder(spark, settings, str(shop))
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 5)
    assert second.table_version == first.table_version == version_after_first

    (shop / "bags" / "b3.png").write_bytes(_image(99))
    third = ingest_folder(spark, settings, str(shop))
    assert (third.inserted, third.updated, third.unchanged) == (0, 1, 4)
    assert third.table_version == version_after_first + 1
    after = read_products(spark, settings)[0].toPandas().set_index("product_id").sort_index()
    changed = [pid for pid in before.index
               if before.loc[pid, "content_hash"] != after.loc[pid, "content_hash"]]
    assert changed == ["bags/b3"]
    # Unchanged rows were not rewritten.
    assert (after.drop("bags/b3").ingested_at == before.drop("bags/b3").ingested_at).all()
    assert (after.split == before.split).all()

    # Time travel: the version before the change still has the old image.
    old, version = read_products(spark, settings, version=version_after_first)
    old_row = old.where("product_id = 'bags/b3'").toPandas().iloc[0]
    assert version == version_after_first
    assert old_row.content_hash == before.loc["bags/b3", "content_hash"]


def test_metadata_csv_sets_category_title_and_rejects_unlisted(spark, settings, tmp_path):
    shop = tmp_path / "shop"
    shop.mkdir()
    for name, seed in (("a.png", 1), ("b.png", 2), ("unlisted.png", 3)):
        (shop / name).write_bytes(_image(seed))
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"product_id": ["SKU-1", "SKU-2"], "category": ["Sneaker", "Bag"],
                  "title": ["Red runner", "Tote"], "path": ["a.png", "./b.png"]}
                 ).to_csv(csv, index=False)
    summary = ingest_folder(spark, settings, str(shop), str(csv))
    assert (summary.inserted, summary.rejected) == (2, 1)
    rows = read_products(spark, settings)[0].toPandas().set_index("product_id")
    assert rows.loc["SKU-1", ["category", "title"]].tolist() == ["Sneaker", "Red runner"]
    reasons = catalogue_table(settings, "rejects").read(spark).toPandas()
    assert reasons.reason.tolist() == ["no_product_id"]


def test_an_emptied_or_missing_folder_is_refused_and_deletes_nothing(spark, settings, tmp_path):
    """A folder ingest is a full snapshot: a folder emptied of files (a Volume not mounted,
    only symbolic links) would have deleted every product ingested from it. Empty before
    anything came from it (the prod nightly before the first upload): nothing to do, no
    error."""
    from lookalike.errors import UsageError

    shop = tmp_path / "shop" / "hats"
    shop.mkdir(parents=True)
    assert ingest_folder(spark, settings, str(tmp_path / "shop")).inserted == 0
    (shop / "h1.png").write_bytes(_image(1))
    assert ingest_folder(spark, settings, str(tmp_path / "shop")).inserted == 1
    (shop / "h1.png").unlink()
    (shop / "link.png").symlink_to(tmp_path / "elsewhere.png")
    version = catalogue_table(settings, "products").version(spark)
    with pytest.raises(UsageError, match="no files under .*symbolic links: nothing ingested.*"
                                         "deleted the 1 products"):
        ingest_folder(spark, settings, str(tmp_path / "shop"))
    with pytest.raises(UsageError, match="does not exist"):
        ingest_folder(spark, settings, str(tmp_path / "nowhere"))
    assert catalogue_table(settings, "products").version(spark) == version


def test_metadata_csv_with_wrong_schema_is_refused_before_writing(spark, settings, tmp_path):
    (tmp_path / "shop").mkdir()
    csv = tmp_path / "meta.csv"
    csv.write_text("sku,label\n1,x\n")
    with pytest.raises(ValueError, match="missing columns.*category"):
        ingest_folder(spark, settings, str(tmp_path / "shop"), str(csv))


def test_duplicate_product_ids_are_refused(spark, settings):
    rows = pd.DataFrame({"product_id": ["p1", "p1"], "category": ["c", "c"], "title": None,
                         "image": [_image(1), _image(2)], "source_uri": ["u1", "u2"]})
    with pytest.raises(ValueError, match="repeats product_id.*p1"):
        ingest_candidates(spark, settings, rows, "test")


def test_fashion_mnist_subset_keeps_official_test_split(spark, settings):
    summary = ingest_fashion_mnist(spark, settings, limit_per_split=300)
    assert (summary.inserted, summary.rejected) == (600, 0)
    products = read_products(spark, settings)[0].toPandas()
    test_ids = products[products.split == "test"].product_id
    assert len(test_ids) == 300 and test_ids.str.startswith("fmnist-test-").all()
    train_side = products[products.product_id.str.startswith("fmnist-train-")]
    assert set(train_side.split) == {"train", "val"}
    assert 0.03 < (train_side.split == "val").mean() < 0.2
    assert products.category.nunique() == 10
    # Stored dark-on-white like product photos: the border of every item is white.
    first = Image.open(__import__("io").BytesIO(products.image.iloc[0]))
    assert np.asarray(first)[0, 0] == 255


def test_identical_images_never_land_in_two_splits(spark, settings, tmp_path):
    """Forty products, each photographed twice with byte-identical files under another id:
    every pair shares its split (the split keys on the content hash)."""
    for i in range(40):
        for copy in ("a", "b"):
            folder = tmp_path / f"cat{i % 2}"
            folder.mkdir(exist_ok=True)
            (folder / f"p{i}{copy}.png").write_bytes(_image(100 + i))
    ingest_folder(spark, settings, str(tmp_path))
    rows = read_products(spark, settings)[0].toPandas()
    ours = rows[rows.source_uri.str.contains(str(tmp_path))]
    assert len(ours) == 80
    per_image = ours.groupby("content_hash").split.nunique()
    assert len(per_image) == 40 and (per_image == 1).all()
    assert ours.split.nunique() > 1          # ... while the pairs still spread over splits


def test_split_is_a_pure_function_of_its_key():
    ids = [f"sku-{i}" for i in range(20000)]
    splits = [split_for(i, 0.8, 0.1) for i in ids]
    assert splits == [split_for(i, 0.8, 0.1) for i in ids]
    counts = pd.Series(splits).value_counts(normalize=True)
    assert abs(counts["train"] - 0.8) < 0.02 and abs(counts["val"] - 0.1) < 0.02


def test_cli_ingest_prints_one_json_line(tmp_path, home):
    """The job as a user runs it, with Spark's own defaults (the other tests' JVMs run plans
    interpreted: tests/interpreted_spark.py)."""
    import interpreted_spark

    shop = tmp_path / "shop" / "hats"
    shop.mkdir(parents=True)
    (shop / "h1.png").write_bytes(_image(1))
    env = {**__import__("os").environ, "LOOKALIKE_HOME": str(tmp_path / "home"),
           "LOOKALIKE__SPARK__MASTER": "local[1]", "LOOKALIKE__SPARK__DRIVER_MEMORY": "1g"}
    if env.get("PYSPARK_SUBMIT_ARGS") == interpreted_spark.submit_args():
        del env["PYSPARK_SUBMIT_ARGS"]
    result = subprocess.run([sys.executable, "jobs/ingest.py", "--source", "folder",
                             str(tmp_path / "shop")], capture_output=True, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["inserted"] == 1 and summary["rejected"] == 0


def test_full_snapshot_deletes_gone_files_keeps_rejected_ones_and_moves_changed_splits(
        spark, settings, tmp_path):
    shop = tmp_path / "shop"
    (shop / "bags").mkdir(parents=True)
    for i in range(6):
        (shop / "bags" / f"b{i}.png").write_bytes(_image(i))
    first = ingest_folder(spark, settings, str(shop))
    assert (first.inserted, first.deleted) == (6, 0)

    (shop / "bags" / "b0.png").unlink()                                    # gone: deleted
    (shop / "bags" / "b1.png").write_bytes(b"no longer an image")         # broken: kept
    second = ingest_folder(spark, settings, str(shop))
    assert (second.deleted, second.rejected, second.unchanged) == (1, 1, 4)
    ids = sorted(read_products(spark, settings)[0].toPandas().product_id)
    assert ids == ["bags/b1", "bags/b2", "bags/b3", "bags/b4", "bags/b5"]

    # Another folder's products are not part of this snapshot.
    other = tmp_path / "other" / "hats"
    other.mkdir(parents=True)
    (other / "h1.png").write_bytes(_image(50))
    ingest_folder(spark, settings, str(tmp_path / "other"))
    assert ingest_folder(spark, settings, str(shop)).deleted == 0
    assert read_products(spark, settings)[0].count() == 6

    # A changed split setting reaches the rows it concerns.
    moved = settings.replace(catalogue={"split": {"train": 0.2, "val": 0.4, "test": 0.4}})
    third = ingest_folder(spark, moved, str(shop))
    rows = read_products(spark, moved)[0].toPandas().set_index("product_id")
    hashes = {pid: rows.loc[pid, "content_hash"] for pid in rows.index
              if pid.startswith("bags/") and pid != "bags/b1"}
    expected = {pid: split_for(h, 0.2, 0.4) for pid, h in hashes.items()}
    assert third.updated == sum(split_for(hashes[pid], 0.8, 0.1) != s
                                for pid, s in expected.items())
    assert {pid: rows.loc[pid, "split"] for pid in expected} == expected


def test_dbfs_volumes_and_file_uris_give_the_same_path(spark):
    from pyspark.sql import functions as F

    from lookalike.catalogue.ingest import _local_path_column, local_path

    uris = ["dbfs:/Volumes/main/shop/images/bags/b1.png",
            "file:/Volumes/main/shop/images/bags/b1.png",
            "file:///Volumes/main/shop/images/bags/b1.png",
            "/Volumes/main/shop/images/bags/b1.png"]
    assert {local_path(u) for u in uris} == {"/Volumes/main/shop/images/bags/b1.png"}
    frame = spark.createDataFrame([(u,) for u in uris], "uri STRING")
    assert {r[0] for r in frame.select(_local_path_column(F.col("uri"))).collect()} == {
        "/Volumes/main/shop/images/bags/b1.png"}


def test_group_id_ties_photos_of_one_product_and_becomes_the_training_label(spark, settings,
                                                                             tmp_path):
    from lookalike.learning.data import memory_arrays, prepare_training_data

    shop = tmp_path / "shop"
    shop.mkdir()
    for seed in range(8):
        (shop / f"{seed}.png").write_bytes(_image(seed))
    csv = tmp_path / "meta.csv"
    meta = pd.DataFrame({"product_id": [f"photo-{i}" for i in range(8)],
                         "category": ["Bag"] * 4 + ["Coat"] * 4,
                         "group_id": ["bag-1", "bag-1", "bag-2", "", "coat-1", "coat-1",
                                      "coat-1", "coat-2"],
                         "path": [f"{i}.png" for i in range(8)]})
    meta.to_csv(csv, index=False)
    assert ingest_folder(spark, settings, str(shop), str(csv)).inserted == 8
    rows = read_products(spark, settings)[0].toPandas().set_index("product_id")
    assert rows.loc["photo-0", "group_id"] == "bag-1" and rows.loc["photo-3", "group_id"] is None
    # Same files and CSV again: nothing changes; a new group_id is an update of that row.
    assert ingest_folder(spark, settings, str(shop), str(csv)).unchanged == 8
    meta.loc[3, "group_id"] = "bag-2"
    meta.to_csv(csv, index=False)
    assert ingest_folder(spark, settings, str(shop), str(csv)).updated == 1

    # Training learns "same product": label = group (photo-3 now in bag-2).
    everything = settings.replace(catalogue={"split": {"train": 1.0, "val": 0.0, "test": 0.0}})
    ingest_folder(spark, everything, str(shop), str(csv))
    spec = prepare_training_data(spark, everything, mode="memory")
    assert spec.label_column == "group"
    assert spec.labels == ("bag-1", "bag-2", "coat-1", "coat-2")
    images, y = memory_arrays(spec)
    assert sorted(np.bincount(y).tolist()) == [1, 2, 2, 3]
    by_category = prepare_training_data(
        spark, everything.replace(training={"label": "category"}), mode="memory")
    assert by_category.label_column == "category" and not by_category.labels


def test_a_products_table_from_before_group_id_gains_the_column(spark, settings):
    from lookalike.catalogue.tables import create_table, ensure_tables, group_column

    table = catalogue_table(settings, "products")
    old_schema = ("product_id STRING NOT NULL, category STRING NOT NULL, title STRING, "
                  "image BINARY NOT NULL, format STRING, width INT, height INT, channels INT, "
                  "content_hash STRING NOT NULL, source_uri STRING, split STRING NOT NULL, "
                  "ingested_at TIMESTAMP")
    create_table(spark, table, old_schema, change_feed=True)
    assert "group_id" not in table.read(spark).columns
    old_version = table.version(spark)
    ensure_tables(spark, settings)
    assert "group_id" in table.read(spark).columns
    past = table.read(spark, versionAsOf=old_version)
    assert past.select(group_column(past)).columns == ["group_id"]
    summary = ingest_fashion_mnist(spark, settings, limit_per_split=5)
    assert summary.inserted == 10


# ---- hostile and careless folders (issue 19, item 6) ----------------------------------------

def test_symlinks_are_rejects_never_followed(spark, settings, tmp_path):
    """A link back to a parent listed every image ~40 times as new products (two made the
    listing exponential); a link to a file outside the folder was read."""
    import os

    shop = tmp_path / "shop"
    (shop / "shoes").mkdir(parents=True)
    (shop / "shoes" / "a.png").write_bytes(_image(1))
    (shop / "shoes" / "b.png").write_bytes(_image(2))
    secret = tmp_path / "outside.png"
    secret.write_bytes(_image(3))
    os.symlink(shop, shop / "shoes" / "loop")
    os.symlink(shop / "shoes", shop / "again")
    os.symlink(secret, shop / "shoes" / "stolen.png")
    summary = ingest_folder(spark, settings, str(shop))
    assert (summary.inserted, summary.rejected) == (2, 3)
    rejects = catalogue_table(settings, "rejects").read(spark).toPandas()
    assert sorted(Path(u).name for u in rejects.source_uri) == ["again", "loop", "stolen.png"]
    assert set(rejects.reason) == {"symlink"}
    assert all(u.startswith("file:/") for u in rejects.source_uri)
    products = read_products(spark, settings)[0].toPandas()
    assert sorted(products.product_id) == ["shoes/a", "shoes/b"]


def test_files_that_would_share_a_product_id_are_rejected_not_fatal(spark, settings, tmp_path):
    """x.jpg and x.png in one folder aborted the whole ingest."""
    shop = tmp_path / "shop"
    (shop / "bags").mkdir(parents=True)
    (shop / "bags" / "x.jpg").write_bytes(_image(1, fmt="JPEG"))
    (shop / "bags" / "x.png").write_bytes(_image(2))
    (shop / "bags" / "y[1]*.png").write_bytes(_image(3))  # glob characters are literal
    summary = ingest_folder(spark, settings, str(shop))
    assert (summary.inserted, summary.rejected) == (1, 2)
    rejects = catalogue_table(settings, "rejects").read(spark).toPandas()
    assert set(rejects.reason) == {"duplicate_product_id"}
    assert all("x.jpg, bags/x.png all name product 'bags/x'" in d for d in rejects.detail)
    assert read_products(spark, settings)[0].toPandas().product_id.tolist() == ["bags/y[1]*"]


def test_metadata_rows_without_a_file_are_rejected(spark, settings, tmp_path):
    """CSV rows whose path matched no file vanished without a trace."""
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "a.png").write_bytes(_image(1))
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"product_id": ["SKU-1", "SKU-2"], "category": ["Bag", "Bag"],
                  "path": ["a.png", "photos/missing.png"]}).to_csv(csv, index=False)
    summary = ingest_folder(spark, settings, str(shop), str(csv))
    assert (summary.inserted, summary.rejected) == (1, 1)
    rejects = catalogue_table(settings, "rejects").read(spark).toPandas()
    assert rejects.reason.tolist() == ["missing_file"]
    assert rejects.source_uri[0].endswith("shop/photos/missing.png")
    assert "SKU-2" in rejects.detail[0]


def test_photos_of_one_product_never_straddle_splits(spark, settings, tmp_path):
    """60 products x 3 different photos (issue 21: hashing each photo put 32 of 60 products
    in two splits)."""
    shop = tmp_path / "shop"
    shop.mkdir()
    rows = []
    for product in range(60):
        for photo in range(3):
            name = f"{product}-{photo}.png"
            (shop / name).write_bytes(_image(1000 + product * 3 + photo))
            rows.append({"product_id": name[:-4], "category": f"c{product % 3}",
                         "group_id": f"sku-{product}", "path": name})
    csv = tmp_path / "meta.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    ingest_folder(spark, settings, str(shop), str(csv))
    products = read_products(spark, settings)[0].toPandas()
    assert len(products) == 180
    per_product = products.groupby("group_id").split.nunique()
    assert len(per_product) == 60 and (per_product == 1).all()
    assert products.split.nunique() == 3

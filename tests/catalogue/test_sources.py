"""Sources: IDX files and metadata CSVs, read and refused with clear errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from lookalike.catalogue.sources import read_idx, read_metadata_csv


def _idx(path, array: np.ndarray, gz: bool = False):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    path = _idx(tmp_path / ("x.gz" if gz else "x"), images, gz)
    np.testing.assert_array_equal(read_idx(path), images)


def test_idx_with_wrong_length_or_type_is_refused(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(ValueError, match="expected 10 values"):
        read_idx(path)
    path.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"abcd")
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(path)


def test_metadata_csv_checks_columns_duplicates_and_empty_values(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("product_id,category,path\np1,shoes,a.jpg\np2,bags,b.jpg\n")
    frame = read_metadata_csv(str(good))
    assert list(frame.columns) == ["product_id", "category", "title", "group_id", "path"]
    assert frame["title"].tolist() == ["", ""]
    for text, message in [("product_id,path\np1,a.jpg\n", "missing columns"),
                          ("product_id,category,path\np1,a,x\np1,b,y\n", "repeats product_id"),
                          ("product_id,category,path\np1,,x\n", "empty product_id or category")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_metadata_csv(str(bad))

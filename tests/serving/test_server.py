"""The REST contract, through a real `mlflow models serve` on loopback."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lookalike.serving.server import post_json


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _query(url: str, records: list[dict], **params):
    payload = {"dataframe_records": records}
    if params:
        payload["params"] = params
    return post_json(f"{url}/invocations", payload)


def _ok(url: str, records: list[dict], **params) -> pd.DataFrame:
    status, body = _query(url, records, **params)
    assert status == 200, body
    return pd.DataFrame(body["predictions"])


def _product(packaged_model, index: int = 3) -> pd.Series:
    return packaged_model.products.sort_values("product_id").iloc[index]


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_image_query_finds_the_catalogue_item_first(served_model, packaged_model):
    item = _product(packaged_model)
    result = _ok(served_model, [{"image": _b64(item["image"])}], k=5)
    assert len(result) == 5
    assert list(result["rank"]) == [1, 2, 3, 4, 5]
    assert set(result["query"]) == {0}
    assert result.iloc[0]["product_id"] == item["product_id"]
    assert result.iloc[0]["distance"] == pytest.approx(0.0, abs=1e-4)
    assert result.iloc[0]["category"] == item["category"]
    assert (np.diff(result["distance"]) >= -1e-6).all()


@pytest.mark.parametrize("fmt, mode, size", [("JPEG", "RGB", (300, 200)),
                                             ("WEBP", "RGBA", (57, 90)),
                                             ("PNG", "L", (28, 28))])
def test_image_query_any_size_and_colour_mode(served_model, packaged_model, fmt, mode, size):
    item = _product(packaged_model, 5)
    with Image.open(io.BytesIO(item["image"])) as image:
        converted = image.convert(mode).resize(size)
    result = _ok(served_model, [{"image": _b64(_encode(converted, fmt))}], k=3)
    assert len(result) == 3
    assert result["product_id"].is_unique


def test_data_url_prefix_is_accepted(served_model, packaged_model):
    item = _product(packaged_model)
    result = _ok(served_model, [{"image": "data:image/png;base64," + _b64(item["image"])}], k=1)
    assert result.iloc[0]["product_id"] == item["product_id"]


def test_product_id_query_excludes_itself_by_default(served_model, packaged_model):
    pid = _product(packaged_model)["product_id"]
    result = _ok(served_model, [{"product_id": pid}], k=7)
    assert len(result) == 7 and pid not in set(result["product_id"])
    kept = _ok(served_model, [{"product_id": pid}], k=7, exclude_self=False)
    assert kept.iloc[0]["product_id"] == pid
    assert kept.iloc[0]["distance"] == pytest.approx(0.0, abs=1e-5)
    # The nearest other product is the same whether or not self is excluded.
    assert kept.iloc[1]["product_id"] == result.iloc[0]["product_id"]


def test_category_filter(served_model, packaged_model):
    products = packaged_model.products
    counts = products["category"].value_counts()
    category = counts.index[0]
    other = products[products["category"] != category].iloc[0]
    result = _ok(served_model, [{"product_id": other["product_id"]}], k=4, category=category)
    assert len(result) == 4
    assert set(result["category"]) == {category}
    expected = set(products.loc[products["category"] == category, "product_id"])
    assert set(result["product_id"]) <= expected


def test_batch_of_queries_and_default_k(served_model, packaged_model):
    a, b = _product(packaged_model, 1), _product(packaged_model, 2)
    result = _ok(served_model, [{"product_id": a["product_id"]}, {"image": _b64(b["image"])}])
    k = packaged_model.settings.serving.default_k
    assert len(result) == 2 * k
    ranks = result.groupby("query")["rank"].apply(list)
    assert list(ranks.index) == [0, 1]
    assert all(r == list(range(1, k + 1)) for r in ranks)
    assert result[result["query"] == 1].iloc[0]["product_id"] == b["product_id"]


def test_include_images_returns_png_thumbnails(served_model, packaged_model):
    pid = _product(packaged_model)["product_id"]
    result = _ok(served_model, [{"product_id": pid}], k=2, include_images=True)
    for text in result["image"]:
        with Image.open(io.BytesIO(base64.b64decode(text))) as thumb:
            assert thumb.format == "PNG"
    plain = _ok(served_model, [{"product_id": pid}], k=2)
    assert "image" not in plain.columns


def _big_png(side: int) -> bytes:
    return _encode(Image.new("L", (side, side), 255), "PNG")


def _noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return _encode(Image.fromarray(pixels), "PNG")


BAD_REQUESTS = {
    # name: (records, params, words the message must contain)
    "invalid base64": ([{"image": "not base64!!"}], {}, "base64"),
    "not an image": ([{"image": _b64(b"hello, I am not an image" * 4)}], {}, "not_an_image"),
    "truncated image": ([{"image": _b64(_big_png(64)[:60])}], {}, "image"),
    "too many pixels": ([{"image": _b64(_big_png(600))}], {}, "too_many_pixels"),
    "too many bytes": ([{"image": _b64(_noise_png(300))}], {}, "larger than"),
    "unknown product": ([{"product_id": "no-such-product"}], {}, "unknown product_id"),
    "unknown category": ([{"product_id": "@first"}], {"category": "Spaceship"},
                         "unknown category"),
    "k zero": ([{"product_id": "@first"}], {"k": 0}, "k must be between"),
    "k too large": ([{"product_id": "@first"}], {"k": 51}, "k must be between"),
    "both image and product": ([{"product_id": "@first", "image": "@image"}], {}, "both"),
    "neither": ([{"product_id": None, "image": None}], {}, "neither"),
    "empty input": ([], {}, "empty input"),
    "too many rows": ([{"product_id": "@first"}] * 9, {}, "too many rows"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_is_400_and_server_keeps_serving(served_model, packaged_model, name):
    records, params, words = BAD_REQUESTS[name]
    item = _product(packaged_model)
    records = [{key: (item["product_id"] if value == "@first" else
                      _b64(item["image"]) if value == "@image" else value)
                for key, value in record.items()} for record in records]
    status, body = _query(served_model, records, **params)
    assert status == 400, (status, body)
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert words in body["message"], body["message"]
    # The server is alive and still answers a good request.
    assert len(_ok(served_model, [{"product_id": item["product_id"]}], k=2)) == 2


def test_wrongly_typed_param_is_400(served_model, packaged_model):
    item = _product(packaged_model)
    status, body = _query(served_model, [{"product_id": item["product_id"]}], k="many")
    assert status == 400, body
    assert "k" in body["message"]


def test_ping_and_signature(served_model, packaged_model):
    import mlflow

    from lookalike.tracking import configure_mlflow

    configure_mlflow(packaged_model.settings)
    info = mlflow.models.get_model_info(packaged_model.model_uri)
    params = {p.name: p.default for p in info.signature.params.params}
    assert params == {"k": packaged_model.settings.serving.default_k, "category": "",
                      "exclude_self": True, "include_images": False, "look": False}
    inputs = {c.name: c.required for c in info.signature.inputs.inputs}
    assert inputs == {"image": False, "product_id": False}
    outputs = [c.name for c in info.signature.outputs.inputs]
    assert outputs[:6] == ["query", "rank", "product_id", "category", "title", "distance"]
    assert json.loads(json.dumps(info.saved_input_example_info))  # an example was logged


def test_oversized_body_is_413_before_it_is_read_and_the_server_keeps_serving(
        served_model, packaged_model):
    limit = packaged_model.settings.serving.max_body_bytes
    big = {"dataframe_records": [{"product_id": "x" * (limit + 1000)}]}
    status, body = post_json(f"{served_model}/invocations", big)
    assert status == 413, (status, str(body)[:200])
    pid = packaged_model.products.iloc[0]["product_id"]
    assert len(_ok(served_model, [{"product_id": pid}], k=3)) == 3


# ---- hostile clients and images (issue 19, items 1-4) ---------------------------------------

def test_half_open_connections_lock_nobody_out_and_are_closed(served_model, packaged_model):
    """300 sockets that send half a request head and wait: a real client is still answered
    (uvicorn's own limit counted them and answered everyone 503), and the server closes them
    after serving.header_timeout_seconds."""
    import socket
    import time
    import urllib.parse

    parts = urllib.parse.urlsplit(served_model)
    held = []
    try:
        for _ in range(300):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        pid = _product(packaged_model)["product_id"]
        assert len(_ok(served_model, [{"product_id": pid}], k=2)) == 2
        deadline = time.monotonic() + packaged_model.settings.serving.header_timeout_seconds + 5
        for sock in held:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert sock.recv(1) == b""  # closed by the server, nothing answered
            except ConnectionResetError:
                pass  # closed with our unread bytes in its buffer
    finally:
        for sock in held:
            sock.close()


def _keyed_twins(packaged_model) -> tuple[bytes, bytes]:
    """A catalogue picture with its dark background white, and the same with that background
    a tRNS colour key (transparent)."""
    pixels = np.asarray(Image.open(io.BytesIO(_product(packaged_model, 9)["image"]))
                        .convert("RGB")).copy()
    background = pixels.max(axis=-1) < 40
    assert background.any() and not background.all()
    on_white, keyed = pixels.copy(), pixels.copy()
    on_white[background], keyed[background] = 255, (1, 2, 3)
    return (_encode(Image.fromarray(on_white), "PNG"),
            _encode(Image.fromarray(keyed), "PNG", transparency=(1, 2, 3)))


def test_colour_key_png_answers_as_the_same_picture_on_white(served_model, packaged_model):
    on_white, keyed = _keyed_twins(packaged_model)
    white = _ok(served_model, [{"image": _b64(on_white)}], k=5)
    key = _ok(served_model, [{"image": _b64(keyed)}], k=5)
    assert list(key["product_id"]) == list(white["product_id"])
    np.testing.assert_allclose(key["distance"], white["distance"], atol=1e-3)


def test_multi_picture_jpeg_is_answered_as_its_first_picture(served_model, packaged_model):
    picture = Image.open(io.BytesIO(_product(packaged_model, 4)["image"])).convert("RGB")
    mpo = _encode(picture, "MPO", save_all=True, quality=95,
                  append_images=[picture.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])
    plain = _ok(served_model, [{"image": _b64(_encode(picture, "JPEG", quality=95))}], k=3)
    answer = _ok(served_model, [{"image": _b64(mpo)}], k=3)
    assert list(answer["product_id"]) == list(plain["product_id"])
    np.testing.assert_allclose(answer["distance"], plain["distance"], atol=1e-5)


def test_images_that_would_cost_too_much_to_decode_are_400(served_model, packaged_model):
    """Within the pixel limit, but a PNG that decodes at full size over
    serving.max_decode_bytes (1 MB here): refused from its header. The same picture as a
    baseline JPEG decodes at a reduced scale and is answered."""
    rgba = Image.new("RGBA", (480, 480), (200, 10, 10, 255))
    status, body = _query(served_model, [{"image": _b64(_encode(rgba, "PNG"))}], k=2)
    assert status == 400 and "too_costly" in body["message"], body
    jpeg = _encode(rgba.convert("RGB"), "JPEG")
    assert len(_ok(served_model, [{"image": _b64(jpeg)}], k=2)) == 2


def test_a_request_s_decoding_cost_is_bounded(served_model, packaged_model):
    """Each image within serving.max_decode_bytes, but together over
    serving.max_request_decode_bytes (2 MB here): refused before any is decoded."""
    rgba = _b64(_encode(Image.new("RGBA", (300, 300), (9, 9, 9, 255)), "PNG"))  # 0.72 MB
    status, body = _query(served_model, [{"image": rgba}] * 3, k=2)
    assert status == 400 and "per request" in body["message"], body
    assert len(_ok(served_model, [{"image": rgba}] * 2, k=2)) == 4


def test_answer_with_images_is_bounded(served_model, packaged_model):
    """rows x k x include_images can no longer ask for an answer of any size: at most
    serving.max_answer_images thumbnails (20 here)."""
    pid = _product(packaged_model)["product_id"]
    status, body = _query(served_model, [{"product_id": pid}] * 7, k=3, include_images=True)
    assert status == 400 and "at most 20 images" in body["message"], body
    assert len(_ok(served_model, [{"product_id": pid}] * 5, k=4, include_images=True)) == 20
    assert len(_ok(served_model, [{"product_id": pid}] * 7, k=3)) == 21  # no images: fine

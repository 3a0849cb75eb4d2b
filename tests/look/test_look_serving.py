"""``look: true`` in the serving logic: per-garment answers on a photo of a person, the plain
answer on a catalogue picture, and clear refusals (through the real server where it is about
the server)."""

from __future__ import annotations

import base64
import io
import sys

import pandas as pd
import pytest

from lookalike.serving.server import post_json


def _recommender(packaged_model, tmp_path, **look):
    import mlflow

    from lookalike.serving.pyfunc import packaged_artifacts
    from lookalike.serving.recommender import Recommender, limits_from
    from lookalike.tracking import configure_mlflow

    configure_mlflow(packaged_model.settings)
    local = mlflow.artifacts.download_artifacts(packaged_model.model_uri,
                                                dst_path=str(tmp_path / "model"))
    artifacts = packaged_artifacts(local)
    # The fixture's serving limits are tiny (500 x 500 px); the person photos (512 x 600,
    # 413 x 684) need more.
    settings = packaged_model.settings.replace(
        look={"enabled": True, **look},
        serving={"max_pixels": 1_000_000, "max_decode_bytes": 5_000_000,
                 "max_request_decode_bytes": 20_000_000})
    return Recommender(artifacts["embedding_model"], artifacts["index"], artifacts["products"],
                       limits_from(settings))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_look_on_a_model_packaged_without_it_is_400(served_model, packaged_model):
    pid = packaged_model.products.iloc[0]["product_id"]
    status, body = post_json(f"{served_model}/invocations", {
        "dataframe_records": [{"product_id": pid}], "params": {"look": True}})
    assert status == 400 and "look.enabled" in body["message"], body


def test_without_the_extra_look_is_refused_and_everything_else_served(
        packaged_model, tmp_path, monkeypatch):
    for name in ("mediapipe", "mediapipe.python", "mediapipe.python.solutions"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    recommender = _recommender(packaged_model, tmp_path)
    pid = packaged_model.products.iloc[0]["product_id"]
    assert len(recommender.recommend(pd.DataFrame({"product_id": [pid]}), {"k": 2})) == 2
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"lookalike\[look\]"):
        recommender.recommend(pd.DataFrame({"product_id": [pid]}), {"k": 2, "look": True})


def test_a_person_is_answered_per_garment_and_a_catalogue_picture_whole(packaged_model,
                                                                        tmp_path):
    pytest.importorskip("mediapipe", reason="the [look] extra (mediapipe) is not installed")
    from test_mediapipe_pose import PEOPLE, full_body_photo, person_photo

    recommender = _recommender(packaged_model, tmp_path)
    standing = full_body_photo()
    portrait = person_photo()
    buffer = io.BytesIO()
    portrait.save(buffer, format="JPEG", quality=90)
    item = packaged_model.products.iloc[5]
    pid = packaged_model.products.iloc[0]["product_id"]
    frame = pd.DataFrame({"image": [_b64((PEOPLE / "standing-close.jpg").read_bytes()),
                                    _b64(buffer.getvalue()), _b64(item["image"]), None],
                          "product_id": [None, None, None, pid]})
    records = recommender.recommend(frame, {"k": 3, "look": True})
    answer = pd.DataFrame(records)
    # A person head to shoes: three lookalikes per garment, each from its garment's
    # categories (look.garments' Fashion-MNIST defaults), boxes in the original's pixels.
    person = answer[answer["query"] == 0]
    assert list(person.groupby("garment", sort=False).size().items()) == [
        ("top", 3), ("bottom", 3), ("shoes", 3)]
    wanted = {"top": {"T-shirt/top", "Pullover", "Shirt", "Coat"}, "bottom": {"Trouser"},
              "shoes": {"Sandal", "Sneaker", "Ankle boot"}}
    boxes = {}
    for garment, rows in person.groupby("garment"):
        assert set(rows["category"]) <= wanted[garment], (garment, set(rows["category"]))
        assert list(rows["rank"]) == [1, 2, 3]
        boxes[garment] = list(rows["box"].iloc[0])
        left, top, right, bottom = boxes[garment]
        assert 0 <= left < right <= standing.width and 0 <= top < bottom <= standing.height
    assert boxes["top"][1] < boxes["bottom"][1] < boxes["shoes"][1]
    # In the original's pixels: the detector's boxes on its 640 px view (look.max_side), scaled
    # back (684 / 640: 20-40 px more at the lower edges, beyond the tolerance).
    from lookalike.look import make_detector
    from lookalike.look.regions import scaled_box

    view = standing.copy()
    view.thumbnail((640, 640))
    found = make_detector("mediapipe_pose", packaged_model.settings.look.as_limits()).find(view)
    for region in found.regions:
        expected = scaled_box(region.box, standing.width / view.width,
                              standing.height / view.height)
        assert max(abs(a - b) for a, b in zip(boxes[region.garment], expected)) <= 8, (
            region.garment, boxes[region.garment], expected)
    # Waist up: the top only, below the face and down to the picture's bottom.
    waist_up = answer[answer["query"] == 1]
    assert set(waist_up["garment"]) == {"top"} and len(waist_up) == 3
    left, top, right, bottom = waist_up["box"].iloc[0]
    assert 0 <= left < right <= portrait.width and portrait.height * 0.4 < top < bottom
    assert bottom <= portrait.height
    # A catalogue picture has no person: its answer is the plain one, whole.
    flat = answer[answer["query"] == 2]
    plain = pd.DataFrame(recommender.recommend(
        pd.DataFrame({"image": [_b64(item["image"])]}), {"k": 3}))
    assert list(flat["garment"]) == ["whole"] * 3
    assert list(flat["product_id"]) == list(plain["product_id"])
    assert list(flat["box"].iloc[0]) == [0, 0, 28, 28]
    product = answer[answer["query"] == 3]
    assert list(product["garment"]) == ["whole"] * 3 and product["box"].isna().all()
    # The request's category overrides the garment's.
    shoes = pd.DataFrame(recommender.recommend(frame.iloc[1:2], {"k": 2, "look": True,
                                                                 "category": "Sneaker"}))
    assert set(shoes["category"]) == {"Sneaker"}


def test_look_bounds_its_images_per_request(packaged_model, tmp_path):
    pytest.importorskip("mediapipe", reason="the [look] extra (mediapipe) is not installed")
    from mlflow.exceptions import MlflowException

    recommender = _recommender(packaged_model, tmp_path, max_images=2)
    image = _b64(packaged_model.products.iloc[0]["image"])
    with pytest.raises(MlflowException, match="at most 2 images"):
        recommender.recommend(pd.DataFrame({"image": [image] * 3}), {"k": 2, "look": True})

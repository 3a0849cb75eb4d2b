"""The mediapipe_pose detector on real photos (skips without the [look] extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mediapipe", reason="the [look] extra (mediapipe) is not installed")

from lookalike.config import load_settings  # noqa: E402
from lookalike.look import make_detector  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "clothing-photos"
PEOPLE = Path(__file__).resolve().parents[1] / "data" / "people"


def person_photo() -> Image.Image:
    """Grace Hopper, waist up: a public-domain US Navy photo that matplotlib ships."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return Image.open(path).convert("RGB")


def full_body_photo(name: str = "standing-close.jpg") -> Image.Image:
    """A man standing, head to shoes, in a T-shirt, trousers and sneakers (CC0: see
    tests/data/people/README.md)."""
    if not (PEOPLE / name).is_file():
        pytest.skip(f"{PEOPLE / name} is absent (tests/data/people/README.md says why it may be)")
    return Image.open(PEOPLE / name).convert("RGB")


@pytest.fixture(scope="module")
def detector():
    return make_detector("mediapipe_pose", load_settings().look.as_limits())


def test_a_waist_up_portrait_has_a_top(detector):
    photo = person_photo()
    look = detector.find(photo)
    assert look is not None
    assert [r.garment for r in look.regions] == ["top"]
    left, top, right, bottom = look.regions[0].box
    assert top > photo.height * 0.4 and bottom == photo.height  # below the face, to the bottom
    assert right - left > photo.width * 0.5
    assert look.mask.shape == (photo.height, photo.width)
    assert 0.2 < float((look.mask >= 0.5).mean()) < 0.9


@pytest.mark.parametrize("name", ["standing-close.jpg", "standing-room.jpg"])
def test_a_full_body_photo_has_a_top_a_bottom_and_shoes(detector, name):
    photo = full_body_photo(name)
    photo.thumbnail((640, 640))  # as serving shows it to the detector (look.max_side)
    look = detector.find(photo)
    assert look is not None
    boxes = {r.garment: r.box for r in look.regions}
    assert list(boxes) == ["top", "bottom", "shoes"]
    for left, top, right, bottom in boxes.values():
        assert 0 <= left < right <= photo.width and 0 <= top < bottom <= photo.height
    # Stacked down the body, top to shoes, below his face.
    assert boxes["top"][1] < boxes["bottom"][1] < boxes["shoes"][1]
    assert boxes["top"][3] <= boxes["bottom"][3] <= boxes["shoes"][3]
    assert boxes["top"][1] > 0.12 * photo.height
    # One person: every box straddles the top's centre line; the mask covers his chest, not the
    # picture's corner.
    centre = (boxes["top"][0] + boxes["top"][2]) / 2
    assert all(b[0] < centre < b[2] for b in boxes.values())
    chest = (round((boxes["top"][1] + boxes["top"][3]) / 2), round(centre))
    assert look.mask[chest] >= 0.5 and look.mask[2, 2] < 0.5


def test_flat_garments_have_no_person(detector):
    """Catalogue-style photos keep their whole-picture answer: none of 60 shared clothing
    photos (flat or hanging garments) is taken for a person (Pose alone took 3)."""
    if not PHOTOS.is_dir():
        pytest.skip(f"{PHOTOS} is absent (a user's clone has no ../shared)")
    files = sorted((PHOTOS / "images").glob("*.jpg"))[::20][:60]
    found = [f.name for f in files if detector.find(Image.open(f).convert("RGB")) is not None]
    assert found == [], found


def test_a_blank_picture_has_no_person(detector):
    assert detector.find(Image.fromarray(np.full((200, 150, 3), 255, np.uint8))) is None

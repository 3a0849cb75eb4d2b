"""Garment regions from body landmarks, and each region's model input (no detector)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lookalike.look.regions import Region, region_input, regions_from_landmarks, scaled_box


def _standing(visible=1.0) -> np.ndarray:
    """33 BlazePose landmarks of a person standing, facing the camera, in a 400 x 800 picture
    (x, y as fractions)."""
    points = np.zeros((33, 3))
    points[:, 2] = 0.0
    named = {0: (0.5, 0.10), 2: (0.47, 0.08), 5: (0.53, 0.08),        # nose, eyes
             11: (0.62, 0.20), 12: (0.38, 0.20),                      # shoulders
             13: (0.68, 0.33), 14: (0.32, 0.33),                      # elbows
             23: (0.58, 0.48), 24: (0.42, 0.48),                      # hips
             25: (0.58, 0.68), 26: (0.42, 0.68),                      # knees
             27: (0.58, 0.88), 28: (0.42, 0.88),                      # ankles
             29: (0.57, 0.91), 30: (0.43, 0.91), 31: (0.60, 0.94), 32: (0.40, 0.94)}
    for i, (x, y) in named.items():
        points[i] = (x, y, visible)
    return points


def test_a_standing_person_has_top_bottom_and_shoes_in_order():
    regions = regions_from_landmarks(_standing(), 400, 800, 0.5)
    assert [r.garment for r in regions] == ["top", "bottom", "shoes"]
    top, bottom, shoes = (r.box for r in regions)
    assert top[1] < bottom[1] < shoes[1] and top[3] <= bottom[3] <= shoes[3] <= 800
    assert top[1] <= 0.20 * 800 <= top[3] and top[3] >= 0.48 * 800  # shoulders to hips
    assert bottom[3] >= 0.88 * 800                                   # down to the ankles
    assert all(0 <= b[0] < b[2] <= 400 for b in (top, bottom, shoes))


def test_waist_up_photo_has_a_top_to_the_picture_s_bottom():
    points = _standing()
    points[23:, 2] = 0.01  # hips and below out of the picture
    regions = regions_from_landmarks(points, 400, 800, 0.5)
    assert [r.garment for r in regions] == ["top"] and regions[0].box[3] == 800


def test_no_face_or_no_shoulders_is_no_person():
    """A garment on a hanger: pose estimators sometimes find 'shoulders', rarely a face."""
    faceless = _standing()
    faceless[[0, 2, 5], 2] = 0.1
    assert regions_from_landmarks(faceless, 400, 800, 0.5) == ()
    assert [r.garment for r in regions_from_landmarks(faceless, 400, 800, 0.5,
                                                      require_face=False)][0] == "top"
    shoulderless = _standing()
    shoulderless[[11, 12], 2] = 0.2
    assert regions_from_landmarks(shoulderless, 400, 800, 0.5) == ()


def test_region_input_puts_the_background_on_white():
    picture = Image.new("RGB", (100, 100), (0, 0, 0))
    mask = np.zeros((100, 100), np.float32)
    mask[20:80, 40:60] = 1.0  # the person
    array = region_input(picture, Region("top", (10, 10, 90, 90)), mask, 32, 3)
    assert array.shape == (32, 32, 3)
    assert array[0, 0].min() == pytest.approx(1.0)   # background: white
    assert array[16, 16].max() == pytest.approx(0.0)  # the person's black pixels stay
    without = region_input(picture, Region("top", (10, 10, 90, 90)), None, 32, 3)
    assert without[16, 2].max() == pytest.approx(0.0)  # no mask: the crop as it is


def test_boxes_scale_to_the_original_s_pixels():
    assert scaled_box((10, 20, 30, 40), 2.0, 0.5) == [20, 10, 60, 20]

"""Garment regions of a person, and the model input of each: pure functions, no detector.

A detector (:mod:`lookalike.look.mediapipe_pose`) finds body landmarks; the regions follow
from them (:func:`regions_from_landmarks`): shoulders to hips is the top, hips to ankles the
bottom, the feet the shoes. They are body regions, not garment outlines (a long coat is cut at
the hip). Each crop is put on white where the person mask says background, then goes through
the one preprocessing function (:func:`lookalike.preprocessing.pil_to_model_input`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from lookalike.preprocessing import pil_to_model_input

GARMENTS = ("top", "bottom", "shoes")
WHOLE = "whole"

# BlazePose's 33 landmarks (the ones used here).
NOSE, LEFT_EYE, RIGHT_EYE = 0, 2, 5
SHOULDERS, ELBOWS, HIPS = (11, 12), (13, 14), (23, 24)
KNEES, ANKLES, FEET = (25, 26), (27, 28), (27, 28, 29, 30, 31, 32)


@dataclass(frozen=True)
class Region:
    """A garment's box in a picture's pixels: (left, top, right, bottom), right/bottom
    exclusive."""

    garment: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Look:
    """What a detector found on one picture: garment regions, and the person mask (float in
    [0, 1], the picture's height x width; None when the detector gives none)."""

    regions: tuple[Region, ...]
    mask: np.ndarray | None = None


def regions_from_landmarks(points: np.ndarray, width: int, height: int, min_visibility: float,
                           require_face: bool = True, min_side: int = 16) -> tuple[Region, ...]:
    """Garment regions from landmarks ``points`` (33 x (x, y, visibility), x and y as
    fractions of the picture). Nothing unless shoulders (and with ``require_face``, the nose
    and an eye) are seen: on flat-lay or hanging garments pose estimators find a "person" in
    a few % of photos, rarely with a face. A region needs its own landmarks seen; its box is
    widened by a margin of the shoulder span and clipped to the picture."""
    points = np.asarray(points, dtype=np.float64)
    xy = points[:, :2] * (width, height)
    seen = points[:, 2] >= min_visibility

    def all_seen(indices) -> bool:
        return bool(seen[list(indices)].all())

    if not all_seen(SHOULDERS):
        return ()
    if require_face and not (seen[NOSE] and (seen[LEFT_EYE] or seen[RIGHT_EYE])):
        return ()
    span = float(np.linalg.norm(xy[SHOULDERS[0]] - xy[SHOULDERS[1]]))
    if span < min_side / 2:
        return ()

    def box(indices, pad_x: float, pad_top: float, pad_bottom: float, bottom: float | None = None):
        chosen = [i for i in indices if seen[i]]
        x, y = xy[chosen, 0], xy[chosen, 1]
        left, right = x.min() - pad_x * span, x.max() + pad_x * span
        top = y.min() - pad_top * span
        low = (y.max() if bottom is None else bottom) + pad_bottom * span
        left, top = max(0, int(round(left))), max(0, int(round(top)))
        right, low = min(width, int(round(right))), min(height, int(round(low)))
        if right - left < min_side or low - top < min_side:
            return None
        return left, top, right, low

    regions = []
    # Top: shoulders (and elbows, hips when seen) down to the hips, or the picture's bottom
    # when the hips are out of it (a waist-up photo).
    hips_seen = all_seen(HIPS)
    top_points = [*SHOULDERS, *(i for i in ELBOWS if seen[i]), *(HIPS if hips_seen else ())]
    top = box(top_points, 0.25, 0.15, 0.05, None if hips_seen else float(height))
    if top:
        regions.append(Region("top", top))
    # Bottom: hips to the ankles (or the knees, for shorts and skirts photographed cut off).
    legs = ANKLES if all_seen(ANKLES) else KNEES if all_seen(KNEES) else None
    if hips_seen and legs is not None:
        bottom = box([*HIPS, *KNEES, *legs], 0.2, 0.05, 0.1)
        if bottom:
            regions.append(Region("bottom", bottom))
    # Shoes: the feet, when both ankles are seen.
    if all_seen(ANKLES):
        shoes = box(FEET, 0.2, 0.15, 0.2)
        if shoes:
            regions.append(Region("shoes", shoes))
    return tuple(regions)


def region_input(picture: Image.Image, region: Region, mask: np.ndarray | None, size: int,
                 channels: int) -> np.ndarray:
    """The model input of one garment: its box, background (mask < 0.5) white, through the one
    preprocessing function."""
    left, top, right, bottom = region.box
    crop = picture.crop(region.box).convert("RGB")
    if mask is not None:
        keep = np.asarray(mask)[top:bottom, left:right] >= 0.5
        pixels = np.asarray(crop).copy()
        pixels[~keep] = 255
        crop = Image.fromarray(pixels, "RGB")
    return pil_to_model_input(crop, size, channels)


def scaled_box(box: Sequence[int], scale_x: float, scale_y: float) -> list[int]:
    """A box in another resolution of the same picture (the original's pixels, for answers)."""
    left, top, right, bottom = box
    return [int(round(left * scale_x)), int(round(top * scale_y)),
            int(round(right * scale_x)), int(round(bottom * scale_y))]

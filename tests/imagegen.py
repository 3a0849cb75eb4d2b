"""Test helper: encode arrays as image files (a module, not conftest: conftest.py names clash
between test folders)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_image(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    """Encode a uint8 array as image bytes (test helper)."""
    image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()

"""Image bytes -> validated image -> model input array.

This is the only preprocessing in Lookalike: ingestion validates with :func:`inspect_image`,
and training, batch embedding and serving all call :func:`to_model_input` /
:func:`batch_to_model_input`. Scaling to [0, 1] happens here and nowhere else (the model has
no Rescaling layer), so train and serve cannot disagree.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# Truncated files must be errors, never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(ValueError):
    """The bytes are not an acceptable image; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    channels: int
    mode: str


_CHANNELS_BY_MODE = {"1": 1, "L": 1, "P": 3, "RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4,
                     "I": 1, "I;16": 1, "F": 1, "YCbCr": 3}


def inspect_image(data: bytes, max_bytes: int, max_pixels: int,
                  allowed_formats: Sequence[str]) -> ImageInfo:
    """Validate that ``data`` is one whole, decodable image within limits; raise ImageRejected.

    Size is checked from the header before any pixel is decoded, so a decompression bomb is
    refused without allocating it.
    """
    if not data:
        raise ImageRejected("empty", "file has no bytes")
    if len(data) > max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes exceeds limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format or "unknown"
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageRejected("too_many_pixels",
                                        f"{width}x{height} exceeds limit of {max_pixels} pixels")
                if fmt not in allowed_formats:
                    raise ImageRejected("unsupported_format",
                                        f"{fmt} is not one of {list(allowed_formats)}")
                image.load()
                mode = image.mode
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected("too_many_pixels", str(error)) from error
    except UnidentifiedImageError as error:
        raise ImageRejected("not_an_image", "bytes are not a recognised image format") from error
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncated and corrupt streams as OSError/SyntaxError.
        text = str(error)
        reason = "truncated" if "truncated" in text.lower() else "corrupt"
        raise ImageRejected(reason, text or type(error).__name__) from error
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt", f"invalid size {width}x{height}")
    return ImageInfo(format=fmt, width=width, height=height,
                     channels=_CHANNELS_BY_MODE.get(mode, 3), mode=mode)


def to_model_input(data: bytes, size: int, channels: int) -> np.ndarray:
    """Decode image bytes of any size or colour mode into a float32 (size, size, channels) in [0, 1].

    Transparent pixels are composited on white (the usual product-photo background); images are
    letterboxed on white to a square before resizing so products keep their aspect ratio.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return pil_to_model_input(image, size, channels)


def pil_to_model_input(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """As :func:`to_model_input`, for an already-opened PIL image."""
    if image.mode in ("P", "PA", "LA", "RGBA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    target_mode = "L" if channels == 1 else "RGB"
    image = image.convert(target_mode)
    width, height = image.size
    if width != height:
        side = max(width, height)
        fill = 255 if channels == 1 else (255, 255, 255)
        square = Image.new(target_mode, (side, side), fill)
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    if channels == 1:
        array = array[..., np.newaxis]
    return array


def batch_to_model_input(images: Iterable[bytes], size: int, channels: int) -> np.ndarray:
    """Stack :func:`to_model_input` over many images into (n, size, size, channels)."""
    arrays = [to_model_input(data, size, channels) for data in images]
    if not arrays:
        return np.zeros((0, size, size, channels), dtype=np.float32)
    return np.stack(arrays)


def array_to_png(pixels: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) or (H, W, C) array as PNG bytes: how raw-pixel sources are stored."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def thumbnail_png(data: bytes, max_side: int) -> bytes:
    """PNG whose longest side is at most ``max_side``, for display only (API responses, the app,
    catalogue samples); model input always goes through :func:`to_model_input`."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.format == "PNG" and max(image.size) <= max_side:
            return bytes(data)
        if image.mode not in ("L", "RGB", "RGBA", "LA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=6)
        return buffer.getvalue()

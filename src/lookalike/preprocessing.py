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
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

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


def _checked_open(data: bytes, max_bytes: int, max_pixels: int,
                  allowed_formats: Sequence[str]) -> Image.Image:
    """Open ``data`` and check bytes, format and width x height from the header, before any
    pixel is decoded (a decompression bomb is refused without allocating it)."""
    if not data:
        raise ImageRejected("empty", "file has no bytes")
    if len(data) > max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes exceeds limit of {max_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
    fmt = image.format or "unknown"
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels",
                            f"{width}x{height} exceeds limit of {max_pixels} pixels")
    if fmt not in allowed_formats:
        raise ImageRejected("unsupported_format", f"{fmt} is not one of {list(allowed_formats)}")
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt", f"invalid size {width}x{height}")
    return image


def _rejection(error: Exception) -> ImageRejected:
    """A decoder's exception as the ImageRejected a caller reports."""
    if isinstance(error, ImageRejected):
        return error
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageRejected("too_many_pixels", str(error))
    if isinstance(error, UnidentifiedImageError):
        return ImageRejected("not_an_image", "bytes are not a recognised image format")
    # Pillow reports truncated and corrupt streams as OSError/SyntaxError/ValueError.
    text = str(error)
    reason = "truncated" if "truncated" in text.lower() else "corrupt"
    return ImageRejected(reason, text or type(error).__name__)


_DECODE_ERRORS = (ImageRejected, Image.DecompressionBombError, Image.DecompressionBombWarning,
                  UnidentifiedImageError, OSError, SyntaxError, ValueError)


def inspect_image(data: bytes, max_bytes: int, max_pixels: int,
                  allowed_formats: Sequence[str]) -> ImageInfo:
    """Validate that ``data`` is one whole, decodable image within limits; raise ImageRejected.

    Size is checked from the header before any pixel is decoded, so a decompression bomb is
    refused without allocating it; then every pixel is decoded once (ingest keeps no file that
    would fail later).
    """
    try:
        with _checked_open(data, max_bytes, max_pixels, allowed_formats) as image:
            image.load()
            info = ImageInfo(format=image.format or "unknown", width=image.size[0],
                             height=image.size[1], mode=image.mode,
                             channels=_CHANNELS_BY_MODE.get(image.mode, 3))
    except _DECODE_ERRORS as error:
        raise _rejection(error) from error
    return info


def checked_model_input(data: bytes, size: int, channels: int, max_bytes: int, max_pixels: int,
                        allowed_formats: Sequence[str]) -> np.ndarray:
    """:func:`inspect_image`'s checks and :func:`to_model_input` with one decode (serving)."""
    try:
        with _checked_open(data, max_bytes, max_pixels, allowed_formats) as image:
            return _decoded_model_input(image, size, channels)
    except _DECODE_ERRORS as error:
        raise _rejection(error) from error


def to_model_input(data: bytes, size: int, channels: int) -> np.ndarray:
    """Decode image bytes of any size or colour mode into a float32 (size, size, channels) in [0, 1].

    Transparent pixels are composited on white (the usual product-photo background); images are
    letterboxed on white to a square so products keep their aspect ratio.
    """
    with Image.open(io.BytesIO(data)) as image:
        return _decoded_model_input(image, size, channels)


def _decoded_model_input(image: Image.Image, size: int, channels: int) -> np.ndarray:
    # JPEG can decode at a reduced scale (never below the target): less time and memory.
    image.draft("L" if channels == 1 else "RGB", (size, size))
    image.load()
    return pil_to_model_input(image, size, channels)


def pil_to_model_input(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """As :func:`to_model_input`, for an already-opened PIL image.

    The image is resized so its longest side is ``size`` *before* it is letterboxed, so memory
    follows the output size: a 100000 x 250 strip never becomes a 100000 x 100000 square.
    Phone photos are turned upright from their EXIF orientation; 16-bit and float pixels are
    scaled to 8 bits rather than clipped.
    """
    image = _upright(_eight_bit(image))
    if image.mode in ("P", "PA", "LA", "RGBA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    target_mode = "L" if channels == 1 else "RGB"
    image = image.convert(target_mode)
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / max(width, height)
        fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
        if fitted != (width, height):
            image = image.resize(fitted, Image.Resampling.BILINEAR)
        if fitted != (size, size):
            fill = 255 if channels == 1 else (255, 255, 255)
            square = Image.new(target_mode, (size, size), fill)
            square.paste(image, ((size - fitted[0]) // 2, (size - fitted[1]) // 2))
            image = square
    array = np.asarray(image, dtype=np.float32) / 255.0
    if channels == 1:
        array = array[..., np.newaxis]
    return array


_EXIF_ORIENTATION = 0x0112


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (phone cameras store it sideways)."""
    if "exif" not in image.info:  # no EXIF block: nothing to parse (most catalogue images)
        return image
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: keep the pixels as stored
        return image
    return ImageOps.exif_transpose(image) if orientation not in (1, None) else image


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit ("I;16*", "I") and float ("F") grey images as 8-bit "L", scaled, not clipped.

    16-bit data spans 0..65535 (an "I" image whose values stay within 0..255 is 8-bit data);
    float data is taken as 0..1 when it stays within it, else as 0..255.
    """
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    high = float(values.max()) if values.size else 0.0
    if image.mode == "F":
        scale = 255.0 if high <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or high > 255 else 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


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
        if image.format == "PNG" and max(image.size) <= max_side and image.mode in (
                "L", "RGB", "RGBA", "LA", "P"):
            return bytes(data)
        image = _upright(_eight_bit(image))
        if image.mode not in ("L", "RGB", "RGBA", "LA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=6)
        return buffer.getvalue()

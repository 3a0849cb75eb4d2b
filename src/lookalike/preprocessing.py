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
from PIL import (Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin,
                 UnidentifiedImageError)

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


# Formats Pillow reports for a file that is a JPEG to every other reader: MPO is a JPEG with
# extra pictures after the first (phone photos with gain maps or depth maps carry them).
_JPEG_ALIASES = {"MPO": "JPEG"}

# PNG text chunks are decompressed whole when the header is read (Pillow's default allows
# 64 MB in all): product photos need none of it.
PngImagePlugin.MAX_TEXT_CHUNK = 256 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024


def image_format(image: Image.Image) -> str:
    """The file format of an opened image, MPO (a multi-picture JPEG) reported as JPEG."""
    fmt = image.format or "unknown"
    return _JPEG_ALIASES.get(fmt, fmt)


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
    fmt = image_format(image)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels",
                            f"{width}x{height} exceeds limit of {max_pixels} pixels")
    if fmt not in allowed_formats:
        raise ImageRejected("unsupported_format", f"{fmt} is not one of {list(allowed_formats)}")
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt", f"invalid size {width}x{height}")
    return image


# Bytes per pixel of a decoded image in each Pillow mode (Pillow keeps 2- and 3-band pixels
# in 4 bytes).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def decode_cost(image: Image.Image, size: int) -> int:
    """Peak bytes that :func:`_decoded_model_input` allocates for ``image`` (opened, not yet
    decoded), from its header: what a server bounds before it decodes anything.

    A baseline JPEG decodes at a reduced scale (at least ``size``) and costs little whatever
    its size. Every other image is decoded at full size first: PNG, WebP, and progressive
    JPEG, whose decoder keeps every DCT coefficient (2 bytes each) of the whole picture.
    """
    width, height = image.size
    full = width * height
    if isinstance(image, JpegImagePlugin.JpegImageFile):
        scale = 1
        while scale < 8 and min(width, height) // (scale * 2) >= size:
            scale *= 2  # what draft() picks: the smallest picture still >= size
        drafted = -(-width // scale) * -(-height // scale) * 4
        if image.info.get("progressive") or image.info.get("progression"):
            sampling = JpegImagePlugin.get_sampling(image)  # 0: 4:4:4, 1: 4:2:2, 2: 4:2:0
            chroma = {1: 0.5, 2: 0.25}.get(sampling, 1.0)
            layers = len(image.getbands())
            return int(full * 2 * (1 + (layers - 1) * chroma)) + drafted
        return drafted
    if image.format == "WEBP":
        return full * 16  # libwebp's RGBA canvas, Pillow's copy, and its resize (measured)
    decoded = _MODE_BYTES.get(image.mode, 4)
    if image.mode == "PA" or "transparency" in image.info:
        return full * (decoded + 8)  # made RGBA at full size, then resized premultiplied
    if image.mode == "P":
        return full * (decoded + 4)  # made RGB at full size
    if image.mode in ("LA", "RGBA"):
        return full * decoded * 2  # resized premultiplied: one more copy
    if image.mode == "1":
        return full * 2
    return full * decoded


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
            info = ImageInfo(format=image_format(image), width=image.size[0],
                             height=image.size[1], mode=image.mode,
                             channels=_CHANNELS_BY_MODE.get(image.mode, 3))
    except _DECODE_ERRORS as error:
        raise _rejection(error) from error
    return info


def checked_decode_cost(data: bytes, size: int, max_bytes: int, max_pixels: int,
                        allowed_formats: Sequence[str], max_decode_bytes: int) -> int:
    """The header checks of :func:`checked_model_input` alone (nothing decoded): the image's
    :func:`decode_cost`, or ImageRejected. Lets a server bound a whole request first."""
    try:
        with _checked_open(data, max_bytes, max_pixels, allowed_formats) as image:
            return _affordable(image, size, max_decode_bytes)
    except _DECODE_ERRORS as error:
        raise _rejection(error) from error


def checked_model_input(data: bytes, size: int, channels: int, max_bytes: int, max_pixels: int,
                        allowed_formats: Sequence[str], max_decode_bytes: int | None = None
                        ) -> np.ndarray:
    """:func:`inspect_image`'s checks and :func:`to_model_input` with one decode (serving).

    With ``max_decode_bytes``, an image whose decoding would allocate more
    (:func:`decode_cost`, read from the header) is refused before any pixel is decoded.
    """
    try:
        with _checked_open(data, max_bytes, max_pixels, allowed_formats) as image:
            if max_decode_bytes is not None:
                _affordable(image, size, max_decode_bytes)
            return _decoded_model_input(image, size, channels)
    except _DECODE_ERRORS as error:
        raise _rejection(error) from error


def _affordable(image: Image.Image, size: int, max_decode_bytes: int) -> int:
    cost = decode_cost(image, size)
    if cost > max_decode_bytes:
        kind = "progressive JPEG" if image_format(image) == "JPEG" else image_format(image)
        raise ImageRejected(
            "too_costly", f"a {image.size[0]}x{image.size[1]} {kind} ({image.mode}) decodes at "
            f"full size, about {cost // 1_000_000} MB, over the limit of "
            f"{max_decode_bytes // 1_000_000} MB: send it smaller, or as a baseline JPEG")
    return cost


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

    The image is first resized, in the mode it was decoded in, so its longest side is
    ``size``; every conversion after that (bit depth, EXIF orientation, transparency, colour,
    the letterbox) works on the small image, so they cost memory that follows the output size.
    Only what cannot wait is done at full size: palettes and colour-key transparency (tRNS)
    become RGBA first, since resizing would blend their pixels. Phone photos are turned upright
    from their EXIF orientation; 16-bit and float pixels are scaled to 8 bits, not clipped.
    """
    target_mode = "L" if channels == 1 else "RGB"
    image = _fitted(image, size, target_mode)
    if image.size != (size, size):
        fill = 255 if channels == 1 else (255, 255, 255)
        square = Image.new(target_mode, (size, size), fill)
        square.paste(image, ((size - image.size[0]) // 2, (size - image.size[1]) // 2))
        image = square
    array = np.asarray(image, dtype=np.float32) / 255.0
    if channels == 1:
        array = array[..., np.newaxis]
    return array


def _fitted(image: Image.Image, longest: int, mode: str, enlarge: bool = True) -> Image.Image:
    """``image`` resized so its longest side is ``longest`` (never enlarged unless
    ``enlarge``), then 8-bit, upright, transparency on white, in ``mode``: the steps of
    :func:`pil_to_model_input` before its letterbox."""
    image = _before_resize(image)
    width, height = image.size
    # Turned a quarter, the longest side is still the longest: resize before _upright.
    scale = longest / max(width, height)
    if scale < 1 or enlarge:
        fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
        if fitted != (width, height):
            image = image.resize(fitted, Image.Resampling.BILINEAR)
    image = _upright(_eight_bit(image))
    if image.mode in ("LA", "RGBA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


def checked_picture(data: bytes, max_side: int, max_bytes: int, max_pixels: int,
                    allowed_formats: Sequence[str], max_decode_bytes: int) -> Image.Image:
    """An RGB picture of at most ``max_side`` px a side, upright, transparency on white, with
    :func:`checked_model_input`'s checks and bounds: what a detector looks at (crops of it go
    through :func:`pil_to_model_input`). Its size is the upright original's, scaled."""
    try:
        with _checked_open(data, max_bytes, max_pixels, allowed_formats) as image:
            _affordable(image, max_side, max_decode_bytes)
            image.draft("RGB", (max_side, max_side))
            image.load()
            return _fitted(image, max_side, "RGB", enlarge=False)
    except _DECODE_ERRORS as error:
        raise _rejection(error) from error


def upright_size(data: bytes) -> tuple[int, int]:
    """Width and height of an image as shown: after its EXIF orientation (from the header)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if "exif" in image.info:
            try:
                if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                    return height, width
            except Exception:  # noqa: BLE001 - unreadable EXIF: as stored (as _upright)
                pass
        return width, height


def _before_resize(image: Image.Image) -> Image.Image:
    """What must happen at full size: palette and colour-key transparency as real alpha
    (resizing blends neighbours, so a key colour would no longer match), bilevel as grey
    (Pillow resizes "1" and "P" by nearest neighbour only)."""
    if image.mode in ("P", "PA"):
        transparent = image.mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if transparent else "RGB")
    if "transparency" in image.info and image.mode in ("L", "RGB", "1"):
        # A tRNS colour key: pixels of that exact colour are transparent.
        return image.convert("RGBA")
    if image.mode == "1":
        return image.convert("L")
    return image


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

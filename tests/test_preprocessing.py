"""The shared preprocessing: validation reasons and one model input for every colour mode."""

import io

import numpy as np
import pytest
from PIL import Image

from imagegen import encode_image
from lookalike.preprocessing import (
    ImageRejected,
    batch_to_model_input,
    inspect_image,
    to_model_input,
)

LIMITS = dict(max_bytes=1_000_000, max_pixels=1_000_000, allowed_formats=("JPEG", "PNG", "WEBP"))


def _gradient(height=40, width=30):
    return (np.arange(height * width, dtype=np.uint32).reshape(height, width) % 256).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_colour_mode_gives_one_shape_in_unit_range(mode, channels):
    image = Image.fromarray(_gradient()).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    array = to_model_input(buffer.getvalue(), size=28, channels=channels)
    assert array.shape == (28, 28, channels) and array.dtype == np.float32
    assert 0.0 <= array.min() and array.max() <= 1.0
    # Scaled exactly once: a mid-grey pixel is ~0.5, not ~0.002.
    assert array.max() > 0.5


def test_same_pixels_in_png_and_webp_lossless_give_same_input():
    pixels = np.stack([_gradient(28, 28)] * 3, axis=-1)
    png = to_model_input(encode_image(pixels, "PNG"), 28, 3)
    webp = to_model_input(_webp_lossless(pixels), 28, 3)
    np.testing.assert_allclose(png, webp, atol=1 / 255)
    np.testing.assert_allclose(png[..., 0], pixels[..., 0] / 255.0, atol=1e-6)


def _webp_lossless(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def test_transparent_background_becomes_white_and_aspect_is_kept():
    rgba = np.zeros((20, 40, 4), dtype=np.uint8)  # fully transparent, wide
    rgba[5:15, 10:30] = (0, 0, 0, 255)            # opaque black product
    array = to_model_input(encode_image(rgba, "PNG"), 40, 1)[..., 0]
    assert array[0, 0] == pytest.approx(1.0)      # letterbox and transparency are white
    assert array[20, 20] == pytest.approx(0.0)    # the product stays black


def test_batch_stacks():
    data = [encode_image(_gradient()), encode_image(_gradient(10, 50))]
    assert batch_to_model_input(data, 16, 1).shape == (2, 16, 16, 1)
    assert batch_to_model_input([], 16, 1).shape == (0, 16, 16, 1)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is not an image at all", "not_an_image"),
    (encode_image(_gradient(), "PNG")[:60], "truncated"),
    (encode_image(_gradient(), "BMP"), "unsupported_format"),
])
def test_rejections_have_reasons(data, reason):
    with pytest.raises(ImageRejected) as error:
        inspect_image(data, **LIMITS)
    assert error.value.reason == reason


def test_pixel_limit_checked_before_decoding():
    big = Image.new("L", (2000, 1000))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    with pytest.raises(ImageRejected) as error:
        inspect_image(buffer.getvalue(), max_bytes=10_000_000, max_pixels=1_000_000,
                      allowed_formats=("PNG",))
    assert error.value.reason == "too_many_pixels"


def test_byte_limit():
    data = encode_image(_gradient())
    with pytest.raises(ImageRejected) as error:
        inspect_image(data, max_bytes=len(data) - 1, max_pixels=10**6, allowed_formats=("PNG",))
    assert error.value.reason == "too_large"


def test_good_image_facts():
    info = inspect_image(encode_image(np.zeros((12, 34, 3), dtype=np.uint8), "JPEG"), **LIMITS)
    assert (info.format, info.width, info.height, info.channels) == ("JPEG", 34, 12, 3)


def test_a_long_strip_is_decoded_within_bounded_memory(tmp_path):
    """A 100000 x 250 PNG (25 MP, inside the serving limit) is letterboxed at the target size:
    peak memory stays far below the 10 GB a full-size square would take."""
    import subprocess
    import sys

    strip = tmp_path / "strip.png"
    Image.new("L", (100_000, 250), 40).save(strip)
    script = ("import resource, sys\n"
              "from lookalike.preprocessing import checked_model_input\n"
              f"data = open({str(strip)!r}, 'rb').read()\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "x = checked_model_input(data, 28, 1, 10_000_000, 25_000_000, ['PNG'])\n"
              "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "print(x.shape, round(float(x[13, 14, 0]), 3), (after - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    shape, centre, extra_mb = " ".join(out[:3]), float(out[3]), int(out[4])
    assert shape == "(28, 28, 1)" and centre == pytest.approx(40 / 255, abs=0.01)
    assert extra_mb < 200, f"{extra_mb} MB extra to decode a 25 MP strip"

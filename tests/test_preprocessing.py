"""The shared preprocessing: validation reasons and one model input for every colour mode."""

import io

import numpy as np
import pytest
from PIL import Image

from imagegen import encode_image
from lookalike.preprocessing import (
    ImageRejected,
    batch_to_model_input,
    checked_model_input,
    decode_cost,
    inspect_image,
    pil_to_model_input,
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


def test_sixteen_bit_and_float_pictures_match_the_eight_bit_one():
    """A 16-bit grey PNG (and a float TIFF-like image) of the same picture gives the same model
    input as the 8-bit one: values are scaled, not clipped at 255."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    eight = to_model_input(encode_image(pixels), 28, 1)
    sixteen = Image.fromarray((pixels.astype(np.uint16) * 257), mode="I;16")
    buffer = io.BytesIO()
    sixteen.save(buffer, format="PNG")
    from_sixteen = to_model_input(buffer.getvalue(), 28, 1)
    np.testing.assert_allclose(from_sixteen, eight, atol=1.5 / 255)
    floats = pil_to_model_input(Image.fromarray(pixels.astype(np.float32) / 255, mode="F"), 28, 1)
    np.testing.assert_allclose(floats, eight, atol=1.5 / 255)


def test_exif_orientation_turns_phone_photos_upright():
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90° clockwise to view) gives the
    same model input as the upright picture."""
    upright = np.full((40, 20, 3), 255, np.uint8)
    upright[:10] = (200, 30, 30)  # a red band at the top of the upright picture
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # sideways on disk
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    turned = to_model_input(buffer.getvalue(), 32, 3)
    reference = pil_to_model_input(Image.fromarray(upright), 32, 3)
    assert np.abs(turned - reference).mean() < 0.03
    assert turned[:6, 12:20, 0].mean() > 0.6 and turned[:6, 12:20, 1].mean() < 0.3  # red on top


# ---- hostile and unusual images (issue 19, items 2 and 3) -----------------------------------

def _saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo(width=64, height=48) -> Image.Image:
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def test_multi_picture_jpeg_is_a_jpeg():
    """A phone photo with an MPF segment (gain or depth map) opens as MPO: it is a JPEG."""
    first, second = _photo(), _photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mpo = _saved(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert inspect_image(mpo, **LIMITS).format == "JPEG"
    plain = to_model_input(_saved(first, "JPEG", quality=95), 32, 3)
    np.testing.assert_allclose(checked_model_input(mpo, 32, 3, **LIMITS), plain, atol=1e-6)


def test_colour_key_transparency_is_composited_on_white():
    """An RGB PNG whose background is transparent through a tRNS colour key answers as the
    same picture on white."""
    pixels = np.asarray(_photo()).copy()
    background = np.zeros(pixels.shape[:2], bool)
    background[:, :16] = True
    on_white, keyed = pixels.copy(), pixels.copy()
    on_white[background] = 255
    keyed[background] = (0, 255, 0)
    keyed_png = _saved(Image.fromarray(keyed), "PNG", transparency=(0, 255, 0))
    for channels in (1, 3):
        expected = to_model_input(encode_image(on_white, "PNG"), 40, channels)
        np.testing.assert_allclose(to_model_input(keyed_png, 40, channels), expected, atol=2 / 255)


def test_grey_colour_key_and_palette_transparency_are_white():
    grey = np.full((20, 20), 7, np.uint8)
    grey[5:15, 5:15] = 0
    keyed = _saved(Image.fromarray(grey), "PNG", transparency=7)
    array = to_model_input(keyed, 20, 1)[..., 0]
    assert array[0, 0] == pytest.approx(1.0) and array[10, 10] == pytest.approx(0.0)
    palette = Image.fromarray(grey).convert("P")
    index = palette.getpixel((0, 0))
    assert to_model_input(_saved(palette, "PNG", transparency=index), 20, 1)[0, 0, 0] == 1.0


def test_images_that_decode_at_full_size_are_refused_from_their_header():
    """PNG, WebP and progressive JPEG cannot decode at a reduced scale: their cost is known
    from the header, and over max_decode_bytes they are refused before any pixel is
    decoded (a 48 KB 16-bit 25 MP PNG took 2 s and 620 MB)."""
    bomb = _saved(Image.new("I;16", (5000, 5000)), "PNG")
    assert len(bomb) < 100_000
    with Image.open(io.BytesIO(bomb)) as image:
        assert decode_cost(image, 224) == 5000 * 5000 * 2
    with pytest.raises(ImageRejected) as rejected:
        checked_model_input(bomb, 224, 3, 1_000_000, 30_000_000, ("PNG",), 20_000_000)
    assert rejected.value.reason == "too_costly" and "PNG" in rejected.value.detail
    photo = _photo(800, 600)
    baseline = _saved(photo, "JPEG", quality=90)
    progressive = _saved(photo, "JPEG", quality=90, progressive=True, subsampling=0)
    limits = dict(LIMITS, max_decode_bytes=1_000_000)
    assert checked_model_input(baseline, 64, 3, **limits).shape == (64, 64, 3)
    with pytest.raises(ImageRejected, match="progressive JPEG"):
        checked_model_input(progressive, 64, 3, **limits)
    assert checked_model_input(progressive, 64, 3, **LIMITS).shape == (64, 64, 3)


_PEAK_SCRIPT = r"""
import io, resource, sys
import numpy as np
from PIL import Image
from lookalike.preprocessing import checked_model_input, decode_cost
data = sys.stdin.buffer.read()
with Image.open(io.BytesIO(data)) as image:
    cost = decode_cost(image, 224)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
checked_model_input(data, 224, 3, 10**8, 10**8, ("JPEG", "PNG", "WEBP"), 10**9)
print(cost, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("name", ["16-bit PNG", "RGBA PNG", "colour-key PNG", "palette PNG",
                                  "WebP", "progressive JPEG", "baseline JPEG"])
def test_decode_cost_bounds_what_decoding_allocates(name):
    """The estimate the server refuses by is what decoding really takes (peak memory of a
    fresh process, 2000 x 1500 pixels; within 12 MB)."""
    import subprocess
    import sys

    size = (2000, 1500)
    images = {
        "16-bit PNG": lambda: _saved(Image.new("I;16", size, 300), "PNG"),
        "RGBA PNG": lambda: _saved(Image.new("RGBA", size, (1, 2, 3, 4)), "PNG"),
        "colour-key PNG": lambda: _saved(Image.new("RGB", size), "PNG", transparency=(0, 0, 0)),
        "palette PNG": lambda: _saved(Image.new("P", size), "PNG", transparency=0),
        "WebP": lambda: _saved(Image.new("RGB", size), "WEBP", lossless=True),
        "progressive JPEG": lambda: _saved(_photo(*size), "JPEG", progressive=True,
                                           subsampling=0),
        "baseline JPEG": lambda: _saved(_photo(*size), "JPEG"),
    }
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], input=images[name](),
                          capture_output=True, check=True, timeout=120)
    cost, peak = map(int, done.stdout.split())
    assert peak <= cost + 12_000_000, (name, cost, peak)

"""The scan's verdict on single files: skipped with a reason, kept, or converted to RGB."""

import io

import numpy as np
import pytest
from PIL import Image

from xtune.data._scan import check_image

from .images import bad_files, image_bytes

CASES = [(name, data, expected) for name, (data, expected) in bad_files().items() if not name.startswith(".")]


@pytest.mark.parametrize("name,data,expected", CASES, ids=[c[0] for c in CASES])
def test_every_kind_of_bad_or_odd_file_gets_its_verdict(name, data, expected):
    action, detail = expected.split(":", 1)
    verdict = check_image(data)
    if action == "skip":
        assert verdict.action == "skip"
        assert verdict.reason.startswith(detail)
    else:
        assert verdict.action in ("keep", "convert")
        assert verdict.original == detail


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_plain_rgb_jpeg_and_png_are_kept_byte_for_byte(fmt):
    verdict = check_image(image_bytes(fmt))
    assert verdict.action == "keep" and verdict.original == "" and verdict.payload is None


def test_grayscale_is_kept_and_listed_as_decoded_as_rgb():
    verdict = check_image(image_bytes("PNG", "L"))
    assert verdict.action == "keep" and verdict.original == "PNG L"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_other_formats_are_reencoded_as_rgb_png(fmt):
    verdict = check_image(image_bytes(fmt))
    assert verdict.action == "convert"
    assert Image.open(io.BytesIO(verdict.payload)).format == "PNG"
    assert Image.open(io.BytesIO(verdict.payload)).mode == "RGB"


def test_transparency_is_composited_over_white():
    verdict = check_image(image_bytes("PNG", "RGBA"))
    img = Image.open(io.BytesIO(verdict.payload))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_values_are_scaled_not_clipped():
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    out = io.BytesIO()
    Image.fromarray(values).save(out, format="PNG")
    img = Image.open(io.BytesIO(check_image(out.getvalue()).payload))
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_cmyk_becomes_rgb():
    verdict = check_image(image_bytes("JPEG", "CMYK", color=(200, 40, 40)))
    img = Image.open(io.BytesIO(verdict.payload))
    r, g, b = np.asarray(img).reshape(-1, 3).mean(axis=0)
    assert img.mode == "RGB" and r > g + 60 and r > b + 60

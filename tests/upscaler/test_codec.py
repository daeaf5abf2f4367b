"""Decoding to and encoding from `Picture`: 16-bit PNG both ways, grey, palette transparency, CMYK, EXIF."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from services.upscaler import codec
from services.upscaler.picture import Picture, from_pil
from shared.runtime.errors import InputError
from tests.upscaler.conftest import IMAGES, shared_file


def reference_png16(data: bytes) -> np.ndarray:
    """A deliberately plain PNG reader (non-interlaced, 16-bit): inflate, undo each row's filter byte by byte."""
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert depth == 16 and data[28] == 0, "non-interlaced 16-bit only"
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw, bpp, stride = zlib.decompress(idat), 2 * channels, 2 * channels * width
    rows, prior = [], [0] * stride
    for y in range(height):
        kind, line = raw[y * (stride + 1)], list(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a, b = line[i - bpp] if i >= bpp else 0, prior[i]
            c = prior[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prior = line
    return np.array(rows, np.uint8).reshape(height, width, channels, 2).astype(np.uint16) @ np.array([256, 1])


def test_sixteen_bit_rgba_png_keeps_every_bit() -> None:
    data = shared_file(IMAGES / "tree_alpha_16bit.png").read_bytes()
    picture = codec.decode(data)
    assert (picture.mode, picture.bit_depth, picture.size) == ("RGBA", 16, (342, 256))
    np.testing.assert_array_equal(picture.pixels, reference_png16(data))
    assert len(np.unique(picture.pixels[..., :3] & 0xFF)) > 200  # the low bytes carry information
    assert picture.icc_profile and b"Adobe RGB" in picture.icc_profile


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_sixteen_bit_png_round_trips(channels: int) -> None:
    pixels = np.random.default_rng(channels).integers(0, 65536, (19, 23, channels)).astype(np.uint16)
    data = codec.encode(Picture(pixels, b"profile"), "png")
    assert codec.png_header(data) == (16, {1: 0, 2: 4, 3: 2, 4: 6}[channels])
    decoded = codec.decode(data)
    np.testing.assert_array_equal(decoded.pixels, pixels)
    np.testing.assert_array_equal(reference_png16(data), pixels)  # and an independent reader agrees
    assert decoded.icc_profile == b"profile"


def test_sixteen_bit_goes_to_eight_for_jpeg_and_webp() -> None:
    pixels = np.full((8, 8, 3), 0x8080, np.uint16)
    for fmt in ("jpeg", "webp"):
        image = Image.open(io.BytesIO(codec.encode(Picture(pixels), fmt)))
        assert image.mode == "RGB" and abs(int(np.asarray(image).mean()) - 128) <= 1


def test_sixteen_bit_grey_png() -> None:
    grey = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    picture = codec.decode(buffer.getvalue())
    assert (picture.mode, picture.bit_depth) == ("L", 16)
    np.testing.assert_array_equal(picture.pixels[..., 0], grey)


def test_sixteen_bit_rgb_with_a_transparent_colour_key() -> None:
    pixels = np.full((4, 6, 3), 1000, np.uint16)
    pixels[0, 0] = (1, 2, 3)
    data = codec.encode(Picture(pixels), "png")
    trns = struct.pack(">HHH", 1, 2, 3)
    chunk = struct.pack(">I", 6) + b"tRNS" + trns + struct.pack(">I", zlib.crc32(b"tRNS" + trns))
    data = data[:33] + chunk + data[33:]  # right after IHDR
    picture = codec.decode(data)
    assert picture.mode == "RGBA" and picture.pixels[0, 0, 3] == 0 and picture.pixels[1:, :, 3].min() == 65535


@pytest.mark.parametrize(("name", "mode"), [("wolf_gray.jpg", "L"), ("00017_gray.png", "L"), ("0014.jpg", "RGB")])
def test_real_grey_and_colour_files(name: str, mode: str) -> None:
    data = shared_file(IMAGES / name).read_bytes()
    picture = codec.decode(data)
    assert (picture.mode, picture.bit_depth) == (mode, 8)
    np.testing.assert_array_equal(picture.pixels.reshape(Image.open(io.BytesIO(data)).size[::-1] + (-1,)).squeeze(),
                                  np.asarray(Image.open(io.BytesIO(data))))  # fmt: skip


def test_palette_with_transparency_becomes_rgba() -> None:
    image = Image.new("P", (4, 2))
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putpixel((1, 1), 1)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    picture = codec.decode(buffer.getvalue())
    assert picture.mode == "RGBA"
    assert tuple(picture.pixels[1, 1]) == (0, 255, 0, 255) and picture.pixels[0, 0, 3] == 0


def test_cmyk_becomes_rgb_without_its_profile() -> None:
    image = Image.new("CMYK", (5, 5), (0, 255, 255, 0))
    image.info["icc_profile"] = b"cmyk profile"
    picture = from_pil(image)
    assert picture.mode == "RGB" and tuple(picture.pixels[0, 0]) == (255, 0, 0) and picture.icc_profile is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(buffer, "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    np.testing.assert_array_equal(codec.decode(buffer.getvalue()).pixels, expected)


def test_broken_inputs_are_input_errors() -> None:
    data = shared_file(IMAGES / "tree_alpha_16bit.png").read_bytes()
    with pytest.raises(InputError):
        codec.decode(data[: len(data) // 2])
    with pytest.raises(InputError):
        codec.decode(b"not an image")


def test_picture_views() -> None:
    picture = Picture(np.full((2, 3, 2), 65535, np.uint16))
    assert (picture.mode, picture.size, picture.has_alpha) == ("LA", (3, 2), True)
    assert picture.floats().max() == 1.0 and picture.to_8bit().pixels.max() == 255
    assert picture.to_pil().mode == "LA"
    assert Picture(np.zeros((2, 3, 1), np.uint16)).to_pil().mode == "I;16"
    with pytest.raises(ValueError, match="uint8 or uint16"):
        Picture(np.zeros((2, 2, 3), np.float32))
    resized = Picture(np.full((4, 4, 4), 40000, np.uint16)).resized((10, 6))
    assert resized.size == (10, 6) and resized.bit_depth == 16 and np.abs(resized.pixels.astype(int) - 40000).max() <= 1

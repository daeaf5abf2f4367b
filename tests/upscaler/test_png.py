"""The PNG writer: lossless for every mode, depth and size, one valid zlib stream across parallel bands."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from services.upscaler import codec, png
from services.upscaler.picture import Picture
from shared.images import encode_image
from tests.upscaler.conftest import IMAGES, shared_file
from tests.upscaler.test_codec import reference_png16

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
SIZES = [(1, 1), (1, 7), (7, 1), (2, 3), (37, 23), (64, 129)]  # height, width: odd, one row, one column


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


@pytest.fixture
def small_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bands of a row or two, so that small images cross many band boundaries."""
    monkeypatch.setattr(png, "BAND_BYTES", 96)


def _noise(height: int, width: int, channels: int, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    top = np.iinfo(dtype).max + 1
    return np.random.default_rng(seed).integers(0, top, (height, width, channels)).astype(dtype)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk, checking each CRC."""
    assert data.startswith(png.SIGNATURE)
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("size", SIZES)
def test_eight_bit_decodes_back_exactly(channels: int, size: tuple[int, int], pool, small_bands) -> None:
    pixels = _noise(*size, channels, seed=channels)
    data = png.encode(pixels, pool=pool)
    image = Image.open(io.BytesIO(data))
    assert image.mode == MODES[channels] and image.size == (size[1], size[0])
    np.testing.assert_array_equal(np.asarray(image).reshape(pixels.shape), pixels)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(1, 1), (5, 3), (37, 23)])
def test_sixteen_bit_decodes_back_exactly(channels: int, size: tuple[int, int], pool, small_bands) -> None:
    pixels = _noise(*size, channels, np.uint16, seed=channels)
    data = png.encode(pixels, pool=pool)
    np.testing.assert_array_equal(reference_png16(data), pixels)  # a plain reader
    np.testing.assert_array_equal(codec.decode(data).pixels, pixels)  # the service's own decoder


def test_one_zlib_stream_with_the_whole_adler32_and_valid_crcs(pool, small_bands) -> None:
    pixels = _noise(40, 30, 3)
    chunks = _chunks(png.encode(pixels, b"a profile", pool=pool))
    kinds = [kind for kind, _ in chunks]
    assert kinds[:2] == [b"IHDR", b"iCCP"] and kinds[-1] == b"IEND" and kinds.count(b"IDAT") > 10
    stream = b"".join(body for kind, body in chunks if kind == b"IDAT")
    raw = zlib.decompress(stream)  # checks the Adler-32 combined from the bands' own
    rows = np.frombuffer(raw, np.uint8).reshape(40, 1 + 30 * 3)
    assert rows[0, 0] == 0 and (rows[1:, 0] == 2).all()  # None, then Up


def test_bands_in_threads_write_the_same_bytes_as_one_thread(pool, small_bands) -> None:
    pixels = _noise(50, 20, 4)
    assert png.encode(pixels, pool=pool) == png.encode(pixels)


def test_adler32_combine_matches_zlib() -> None:
    data = np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    for cut in (0, 1, 65_520, 65_521, 131_073, len(data)):
        first, second = data[:cut], data[cut:]
        combined = png._adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
        assert combined == zlib.adler32(data)


def test_icc_profile_is_written_as_pillow_writes_it() -> None:
    image = Image.open(shared_file(IMAGES / "tree_alpha_16bit.png"))  # an Adobe RGB profile
    profile = image.info["icc_profile"]
    data = png.encode(_noise(3, 4, 3), profile)
    assert Image.open(io.BytesIO(data)).info["icc_profile"] == profile
    ours = dict(_chunks(data))[b"iCCP"]
    pillows = dict(_chunks(encode_image(Picture(_noise(3, 4, 3), profile).to_pil(), "png")))[b"iCCP"]
    assert ours == pillows


def test_codec_png_is_lossless_and_keeps_the_profile(pool) -> None:
    for pixels in (_noise(33, 17, 2), _noise(9, 11, 4, np.uint16), _noise(5, 6, 1, np.uint16)):
        data = codec.encode(Picture(pixels, b"profile"), "png", pool=pool)
        decoded = codec.decode(data)
        np.testing.assert_array_equal(decoded.pixels, pixels)
        assert decoded.icc_profile == b"profile" and codec.png_header(data) == (
            8 * pixels.dtype.itemsize,
            png.COLOUR_TYPES[pixels.shape[2]],
        )


def test_size_on_an_upscaled_photo_is_close_to_pillow_level_3() -> None:
    photo = Image.open(shared_file(IMAGES / "OST_009.png")).convert("RGB")
    upscaled = photo.resize((photo.width * 4, photo.height * 4), Image.Resampling.LANCZOS)
    ours = len(png.encode(np.asarray(upscaled)))
    pillows = len(encode_image(upscaled, "png"))  # compress_level=3, adaptive filters
    assert ours < 1.2 * pillows, (ours, pillows)  # 1.13x on this photo; 0.9x to 1.03x on the other shared ones


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((0, 3, 3), np.uint8), np.zeros((3, 0, 1), np.uint8), np.zeros((2, 2, 5), np.uint8)]
    + [np.zeros((2, 2), np.uint8), np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 3), np.int16)],
)
def test_what_png_cannot_hold_is_refused(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError):
        png.encode(pixels)

"""Fuzz: damaged, truncated and oversized images through the fetcher's checks, the classifier and the
upscaler (the functions the workers call, in their order). Each one ends in a result or an InputError;
any other exception would be a crash, or a retry of something that can never work."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.classifier.worker import classify_bytes
from services.upscaler import codec
from services.upscaler.arch import SRVGGNetCompact
from services.upscaler.engine import Upscaler
from shared.images import open_image
from shared.messages import UpscaleOptions
from shared.runtime.errors import InputError
from tests.security import hostile

# Damaged metadata makes Pillow warn ("Corrupt EXIF data"); expected here, and not what is under test.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAX_INPUT_PIXELS = 1_000_000  # small, so that a damaged size field cannot make a fuzz case slow
MAX_OUTPUT_PIXELS = 4_000_000
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same cases on every run: CI stays deterministic
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _png16() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 80).save(buffer, "PNG")
    return buffer.getvalue()


SEEDS = {
    "png rgb": hostile.encoded("PNG"),
    "png rgba": hostile.encoded("PNG", mode="RGBA"),
    "png grey 16-bit": _png16(),
    "png palette": hostile.encoded("PNG", mode="L", bits=4),
    "jpeg": hostile.encoded("JPEG", quality=80),
    "jpeg progressive": hostile.encoded("JPEG", progressive=True),
    "jpeg cmyk": hostile.encoded("JPEG", mode="CMYK"),
    "gif": hostile.encoded("GIF", mode="L"),
    "bmp": hostile.encoded("BMP"),
    "webp lossy": hostile.encoded("WEBP", quality=50),
    "webp lossless": hostile.encoded("WEBP", mode="RGBA", lossless=True),
    "tiff deflate": hostile.encoded("TIFF", compression="tiff_adobe_deflate"),
    "tiff raw": hostile.encoded("TIFF", mode="L"),
}


@functools.cache
def engine(model_dir: Path) -> Upscaler:
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4)
    torch.save({"params": net.state_dict()}, model_dir / "realesr-animevideov3.pth")
    return Upscaler(model_dir, device="cpu", default_tile=32, max_output_pixels=MAX_OUTPUT_PIXELS)


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory: pytest.TempPathFactory) -> Upscaler:
    return engine(tmp_path_factory.mktemp("fuzz-models"))


def pipeline(data: bytes, upscaler: Upscaler) -> tuple[int, int]:
    """What the fetcher, classifier and upscaler workers do with the bytes; the output size."""
    open_image(data, load=False, max_pixels=MAX_INPUT_PIXELS)  # fetcher
    classification = classify_bytes(data, MAX_INPUT_PIXELS)  # classifier
    open_image(data, load=False, max_pixels=MAX_INPUT_PIXELS)  # upscaler, before decoding
    picture = codec.decode(data)
    options = UpscaleOptions(model="realesr-animevideov3", outscale=2)
    result = upscaler.upscale_picture(picture, classification.category, options)
    codec.encode(result.picture, "png")
    return result.width, result.height


def survives(data: bytes, upscaler: Upscaler) -> None:
    try:
        width, height = pipeline(data, upscaler)
    except InputError as exc:
        assert str(exc)  # a readable reason, always
    else:
        assert width * height <= MAX_OUTPUT_PIXELS


@pytest.mark.parametrize("seed", SEEDS)
def test_undamaged_seeds_go_through(seed: str, upscaler: Upscaler) -> None:
    assert pipeline(SEEDS[seed], upscaler) == (64, 48)


@FUZZ
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6),
    keep=st.one_of(st.none(), st.floats(0, 1)),
)
def test_damaged_images(seed: str, flips: list[tuple[int, int]], keep: float | None, upscaler: Upscaler) -> None:
    data = bytearray(SEEDS[seed])
    for position, value in flips:
        data[position % len(data)] = value
    if keep is not None:
        data = data[: int(len(data) * keep)]
    survives(bytes(data), upscaler)


def _png_with_size(width: int, height: int) -> bytes:
    data = bytearray(SEEDS["png rgb"])
    ihdr = data.index(b"IHDR")
    struct.pack_into(">II", data, ihdr + 4, width, height)
    struct.pack_into(">I", data, ihdr + 17, zlib.crc32(data[ihdr : ihdr + 17]))  # a valid header that lies
    return bytes(data)


SIZE_LIARS = {
    "png": _png_with_size,
    "jpeg": hostile.jpeg_bomb,
    "gif": hostile.gif_bomb,
    "bmp": hostile.bmp_bomb,
}


@FUZZ
@given(fmt=st.sampled_from(sorted(SIZE_LIARS)), width=st.integers(0, 65_535), height=st.integers(0, 65_535))
def test_headers_that_lie_about_the_size(fmt: str, width: int, height: int, upscaler: Upscaler) -> None:
    survives(SIZE_LIARS[fmt](width, height), upscaler)


@FUZZ
@given(side=st.integers(0, 16_383))
def test_webp_headers_that_lie_about_the_size(side: int, upscaler: Upscaler) -> None:
    survives(hostile.webp_bomb(side), upscaler)


MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\0\0\0\0WEBPVP8 "]


@FUZZ
@given(magic=st.sampled_from(MAGICS), tail=st.binary(max_size=512))
def test_garbage_behind_a_real_signature(magic: bytes, tail: bytes, upscaler: Upscaler) -> None:
    survives(magic + tail, upscaler)

"""Hostile inputs, made on the spot: decompression bombs (images, HTTP bodies), truncated and corrupt
files, non-images."""

from __future__ import annotations

import functools
import gzip
import io
import struct
import zlib

import numpy as np
from PIL import Image

HTML = b"<!DOCTYPE html><html><body><img src=cat.png></body></html>"
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9000" height="9000"><rect/></svg>'
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
TEXT = b"just some text, not an image at all\n"


def encoded(fmt: str, size: tuple[int, int] = (32, 24), mode: str = "RGB", **params: object) -> bytes:
    """A small noisy image encoded as `fmt` (a Pillow format name)."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A real, valid 1-bit PNG of zeros: 400 MP that compress to ~50 KB, made one row at a time."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    compressor = zlib.compressobj(9)
    stream = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def jpeg_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small JPEG whose frame header (SOF0) claims `width` x `height`."""
    data = bytearray(encoded("JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small GIF whose logical screen claims `width` x `height`."""
    data = bytearray(encoded("GIF", mode="L"))
    struct.pack_into("<HH", data, 6, width, height)
    return bytes(data)


def bmp_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small BMP whose info header claims `width` x `height`."""
    data = bytearray(encoded("BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def webp_bomb(side: int = 16_383) -> bytes:
    """A small lossy WebP whose VP8 frame header claims `side` x `side` (WebP's largest)."""
    data = bytearray(encoded("WEBP", quality=50))
    assert data[12:16] == b"VP8 ", "Pillow wrote an extended WebP; the test needs a simple one"
    struct.pack_into("<HH", data, 26, side, side)
    return bytes(data)


MiB = 1024 * 1024


def gzip_of_zeros(mib: int) -> bytes:
    """gzip of `mib` MiB of zeros (1024: about 1 MB), made without ever holding them: after a full flush
    every MiB of zeros deflates to the same bytes, so one is compressed and repeated; only the CRC
    runs over all of them."""
    zeros = bytes(MiB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no flags, no time, best, unknown OS
    trailer = struct.pack("<II", crc, (mib * MiB) & 0xFFFFFFFF)
    return header + block * mib + deflate.flush() + trailer


@functools.cache
def body_bomb(gib: int = 1) -> bytes:
    """A few KB that are `gib` GiB once undone: send it with `Content-Encoding: gzip, gzip`."""
    return gzip.compress(gzip_of_zeros(gib * 1024), 9)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


def flipped(data: bytes, positions: list[int]) -> bytes:
    """`data` with the bytes at `positions` (taken modulo its length) inverted."""
    out = bytearray(data)
    for position in positions:
        out[position % len(out)] ^= 0xFF
    return bytes(out)

"""Bytes to `Picture` and back, keeping 16 bits per channel where the file has them.

The bit depth comes from the file (a PNG's IHDR), never from pixel values as RealESRGANer guesses it.
Pillow decodes 16-bit grey PNGs as "I;16" but cuts 16-bit RGB, RGBA and grey+alpha PNGs to 8 bits, so
those are decoded by Pillow's own PNG decoder twice with raw modes that keep the high and the low byte of
each sample (unfiltering and de-interlacing stay in Pillow's C code).
PNG outputs, 8 or 16 bits, are written by `services.upscaler.png` (several times Pillow's speed, in bands
on a thread pool); JPEG, WebP and all decoding go through `shared.images` (Pillow), whose errors become
InputError. All of it is host work: the upscaler worker runs it in its handler threads, never on the
device's thread.
"""

from __future__ import annotations

import io
from concurrent.futures import Executor

import numpy as np
from PIL import Image

from services.upscaler import png
from services.upscaler.picture import Picture, exif_orientation, from_pil, orient
from shared.images import encode_image, open_image
from shared.runtime.errors import InputError

PNG_SIGNATURE = png.SIGNATURE
# PNG colour type -> (raw mode giving the high bytes, raw mode giving the low bytes, channels kept)
_SPLIT_RAWMODES = {2: ("RGB;16B", "RGB;16L", 3), 6: ("RGBA;16B", "RGBA;16L", 4), 4: ("RGBA", None, 2)}


def png_header(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None when `data` is not a PNG."""
    if len(data) < 26 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def decode(data: bytes) -> Picture:
    """The picture in `data`; InputError when it is not an image Pillow can fully decode."""
    header = png_header(data)
    if header is not None and header[0] == 16 and header[1] in _SPLIT_RAWMODES:
        return _decode_png16(data, header[1])
    image = open_image(data)
    try:
        return from_pil(image)
    except (OSError, ValueError) as exc:  # e.g. a mode Pillow cannot convert to RGB
        raise InputError(f"cannot convert the {image.mode} image to RGB: {exc}") from exc


def _decode_png16(data: bytes, colour_type: int) -> Picture:
    high_mode, low_mode, channels = _SPLIT_RAWMODES[colour_type]
    image = open_image(data, load=False)  # checks the chunks and CRCs, with the usual InputErrors
    image = Image.open(io.BytesIO(data))  # metadata only: orientation, profile, transparency key
    high = _decode_raw(data, high_mode)
    if low_mode is None:
        # Grey + alpha is 4 bytes a pixel, like 8-bit RGBA: decoded so, it holds L hi, L lo, A hi, A lo.
        pairs = high.astype(np.uint16).reshape(*high.shape[:2], 2, 2)
        pixels = (pairs[..., 0] << 8) | pairs[..., 1]
    else:
        pixels = (high.astype(np.uint16) << 8) | _decode_raw(data, low_mode)
        pixels = pixels[:, :, :channels]
        key = image.info.get("transparency")
        if channels == 3 and isinstance(key, tuple) and len(key) == 3:  # tRNS: one colour is transparent
            alpha = np.where((pixels == np.array(key, np.uint16)).all(axis=2), 0, 65535).astype(np.uint16)
            pixels = np.concatenate([pixels, alpha[:, :, None]], axis=2)
    return Picture(orient(np.ascontiguousarray(pixels), exif_orientation(image)), image.info.get("icc_profile"))


def _decode_raw(data: bytes, rawmode: str) -> np.ndarray:
    """Decode the PNG with Pillow's decoder unpacking `rawmode` (same bits per pixel, so the same unfiltering)."""
    image = Image.open(io.BytesIO(data))
    image.tile = [image.tile[0]._replace(args=rawmode)]
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"input image is corrupt or truncated: {exc}") from exc
    return np.asarray(image)


def encode(picture: Picture, fmt: str, *, pool: Executor | None = None) -> bytes:
    """Encode for `fmt` (png, jpeg, webp): 16-bit pictures stay 16-bit in PNG and are rounded to 8 otherwise.

    PNG keeps every pixel exactly and the ICC profile; its bands run on `pool` (None: in this thread).
    """
    if fmt == "png":
        return png.encode(picture.pixels, picture.icc_profile, pool=pool)
    return encode_image(picture.to_pil(), fmt)


def encode_png16(pixels: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    """A 16-bit PNG of H x W x C uint16 `pixels` (C = 1..4), with the ICC profile if given."""
    if pixels.dtype != np.uint16:
        raise ValueError(f"16-bit pixels are uint16, got {pixels.dtype}")
    return png.encode(pixels, icc_profile)

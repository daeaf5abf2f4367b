"""`Picture`: the image the upscaler works on, from decoding to encoding, and its conversions to and from Pillow.

A picture is an H x W x C array of uint8 or uint16 (its bit depth) with C = 1, 2, 3 or 4 (L, LA, RGB, RGBA),
upright (EXIF orientation applied) and with straight (not premultiplied) alpha. Integers rather than floats:
the output of a 4000 x 3000 input at x4 is 576 MB as uint8 and four times that as float32; `floats()` gives
the [0, 1] view when one is wanted. Pillow cannot hold 16-bit colour, so 16-bit PNGs are decoded by
`services.upscaler.codec` and only reach Pillow here as 16-bit grey ("I;16").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_KEPT_MODES = {"L", "LA", "RGB", "RGBA"}


@dataclass(frozen=True, eq=False)
class Picture:
    """Pixels (H x W x C, uint8 or uint16, straight alpha last) and the colour profile they are in."""

    pixels: np.ndarray
    icc_profile: bytes | None = None

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3 or self.pixels.shape[2] not in MODES:
            raise ValueError(f"pixels must be H x W x 1..4, got shape {self.pixels.shape}")
        if self.pixels.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"pixels must be uint8 or uint16, got {self.pixels.dtype}")

    @property
    def bit_depth(self) -> int:
        return 8 * self.pixels.dtype.itemsize

    @property
    def max_value(self) -> int:
        return (1 << self.bit_depth) - 1

    @property
    def mode(self) -> str:
        return MODES[self.channels]

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow orders it."""
        return self.width, self.height

    def floats(self) -> np.ndarray:
        """The pixels as float32 in [0, 1] (a new array)."""
        return self.pixels.astype(np.float32) / self.max_value

    def with_pixels(self, pixels: np.ndarray) -> Picture:
        return Picture(pixels, self.icc_profile)

    def to_8bit(self) -> Picture:
        if self.bit_depth == 8:
            return self
        # round(v * 255 / 65535) exactly: 65535 = 255 * 257.
        return self.with_pixels(((self.pixels.astype(np.uint32) + 128) // 257).astype(np.uint8))

    def to_pil(self) -> Image.Image:
        """A Pillow image: 8-bit L/LA/RGB/RGBA, or "I;16" for 16-bit grey; other 16-bit pictures are reduced."""
        if self.bit_depth == 16 and self.channels == 1:
            image = Image.fromarray(np.ascontiguousarray(self.pixels[:, :, 0]))  # uint16 -> "I;16"
        else:
            pixels = self.to_8bit().pixels
            image = Image.fromarray(pixels[:, :, 0] if self.channels == 1 else pixels)  # L, LA, RGB or RGBA
        if self.icc_profile:
            image.info["icc_profile"] = self.icc_profile
        return image

    def resized(self, size: tuple[int, int], box: tuple[float, float, float, float] | None = None) -> Picture:
        """Lanczos-resized to `size` (width, height); alpha is premultiplied for the resize, as Pillow does.

        `box` (left, top, right, bottom, fractional pixels): only that region is resized, as Pillow's `box`
        (the filter still reads the pixels around it), so a crop costs no resize of what is cut off."""
        if size == self.size and box in (None, (0, 0, self.width, self.height)):
            return self
        if self.bit_depth == 8:
            resized = np.asarray(self.to_pil().resize(size, Image.Resampling.LANCZOS, box=box))
            return self.with_pixels(resized.reshape(size[1], size[0], self.channels))
        # Pillow resizes 16-bit data one float ("F") plane at a time.
        values = self.floats()
        if self.has_alpha:
            values[:, :, :-1] *= values[:, :, -1:]
        planes = [
            np.asarray(Image.fromarray(values[:, :, c]).resize(size, Image.Resampling.LANCZOS, box=box))
            for c in range(self.channels)
        ]
        out = np.clip(np.stack(planes, axis=2), 0, 1)
        if self.has_alpha:
            alpha = out[:, :, -1:]
            out[:, :, :-1] = np.where(alpha > 0, np.clip(out[:, :, :-1] / np.maximum(alpha, 1e-12), 0, 1), 0)
        return self.with_pixels(np.rint(out * self.max_value).astype(np.uint16))

    def padded(self, size: tuple[int, int], offset: tuple[int, int]) -> Picture:
        """This picture at `offset` (left, top) on a transparent canvas of `size`; one without alpha gains
        an alpha channel, opaque where the picture lies (the same picture when `size` is its own)."""
        if size == self.size:
            return self
        channels = self.channels if self.has_alpha else self.channels + 1
        canvas = np.zeros((size[1], size[0], channels), self.pixels.dtype)  # straight alpha 0, colour 0
        left, top = offset
        region = canvas[top : top + self.height, left : left + self.width]
        region[:, :, : self.channels] = self.pixels
        if not self.has_alpha:
            region[:, :, -1] = self.max_value
        return self.with_pixels(canvas)


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`pixels` (H x W x C) turned upright for EXIF orientation 1..8 (what ImageOps.exif_transpose does)."""
    if orientation in (5, 6, 7, 8):
        # 5: transpose, 6: rotate 90 clockwise, 7: transverse, 8: rotate 90 counter-clockwise
        pixels = {5: pixels, 6: pixels[::-1], 7: pixels[::-1, ::-1], 8: pixels[:, ::-1]}[orientation]
        return np.ascontiguousarray(pixels.transpose(1, 0, 2))
    flips = {2: (slice(None), slice(None, None, -1)), 3: (slice(None, None, -1),) * 2, 4: (slice(None, None, -1),)}
    return np.ascontiguousarray(pixels[flips[orientation]]) if orientation in flips else pixels


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of `image` (1 when absent or invalid)."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not fail the image; it is only a rotation hint
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def from_pil(image: Image.Image) -> Picture:
    """The picture of a Pillow image: upright, in L / LA / RGB / RGBA, 16-bit when the mode holds 16 bits."""
    icc = image.info.get("icc_profile") or None
    orientation = exif_orientation(image)
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if mode == "F":
            values = np.nan_to_num(values) * 65535.0  # float planes are taken as [0, 1]
        pixels = np.clip(values, 0, 65535).astype(np.uint16)[:, :, None]
        key = image.info.get("transparency")
        if isinstance(key, int):  # tRNS on 16-bit grey: one grey value is transparent
            alpha = np.where(pixels == key, 0, 65535).astype(np.uint16)
            pixels = np.concatenate([pixels, alpha], axis=2)
        return Picture(orient(pixels, orientation), icc)
    if mode == "CMYK":
        icc = None  # a CMYK profile does not describe the RGB values the naive conversion makes
    if mode not in _KEPT_MODES or "transparency" in image.info:
        has_alpha = image.has_transparency_data
        grey = mode in ("1", "L", "LA", "La")
        target = ("LA" if has_alpha else "L") if grey else ("RGBA" if has_alpha else "RGB")
        image = image.convert(target)
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return Picture(orient(pixels, orientation), icc)

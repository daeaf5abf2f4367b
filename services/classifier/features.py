"""Measurements the classifier's rules read, taken on a small 8-bit RGB copy of the image.

Each class answers one question about the picture (how much of it is paper and ink, how flat are its
colours) with a few plain numbers, and `largest_face` says whether there is a face; `classify.py` holds the
thresholds that turn them into a category. A number is computed when a rule first reads it, and kept: the
rules read the cheap numbers first, so an image that fails a rule early (most photos fail both the text
and the flat-art rule on their first or second test) never pays for the costly ones.

Everything here works on whole arrays; the filters the rules are defined by (a 3x3 median, a 9x9 grey
closing, a 5x5 dilation) are computed exactly as Pillow and SciPy compute them, only faster: filters.py.
(functools.cached_property on Python 3.11 holds one lock per property, across instances, while it
computes: threads classifying other images wait at most the millisecond or two one of these takes; the
face scan, the long step, is no property.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from services.classifier import filters

NEUTRAL_GREY = 128  # what transparent pixels are composited over
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's convert("L")
# Pillow's own mapping of the EXIF Orientation tag to the transpose that undoes it.
_UNDO_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Sample:
    """The analysis copy: upright 8-bit RGB (transparency composited over grey) and where it is opaque."""

    rgb: np.ndarray  # (h, w, 3) uint8
    opaque: np.ndarray  # (h, w) bool

    @cached_property
    def all_opaque(self) -> bool:
        return bool(self.opaque.all())

    @cached_property
    def opaque_px(self) -> int:
        return max(int(np.count_nonzero(self.opaque)), 1)

    @cached_property
    def gray(self) -> np.ndarray:
        """(h, w) float32 luma; the text rule and the face scan both read it, so it is made once."""
        return self.rgb.astype(np.float32) @ _LUMA

    @cached_property
    def planes(self) -> np.ndarray:
        """(3, h, w) uint8: one contiguous plane per channel, so per-channel work runs on whole planes."""
        return np.ascontiguousarray(self.rgb.transpose(2, 0, 1))

    def share(self, mask: np.ndarray) -> float:
        """Share of the opaque pixels where `mask` (h, w) holds."""
        hits = mask if self.all_opaque else mask & self.opaque
        return int(np.count_nonzero(hits)) / self.opaque_px


class PaperInk:
    """How much of the image is light paper, dark ink and neither, after dividing out uneven lighting.

    Shares are of the opaque pixels; each is computed on first use.
    """

    def __init__(self, s: Sample) -> None:
        self._s = s

    @cached_property
    def colourful(self) -> float:
        """Share of clearly coloured pixels (max - min channel > 48); needs no lighting model, so it is cheap."""
        r, g, b = self._s.planes
        return self._s.share(np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b) > 48)

    @cached_property
    def _background(self) -> np.ndarray:
        # A 9x9 grey closing erases dark strokes thinner than 9 px, leaving the paper under them; the box blur
        # smooths it. Dividing by it removes shadows and vignetting, as on a phone photo of a page.
        return ndi.uniform_filter(filters.closing(self._s.gray, 9), 9)

    @cached_property
    def _norm(self) -> np.ndarray:
        return self._s.gray / np.maximum(self._background, 1.0)

    @cached_property
    def _ink_mask(self) -> np.ndarray:
        ink = self._norm <= 0.60
        return ink if self._s.all_opaque else ink & self._s.opaque

    @cached_property
    def bright(self) -> float:
        """Share of the image whose local background is light (>= mid-grey)."""
        return self._s.share(self._background >= 128)

    @cached_property
    def paper(self) -> float:
        """Share within 15% of the local background."""
        return self._s.share(self._norm >= 0.85)

    @cached_property
    def ink(self) -> float:
        """Share at most 60% as bright as the local background."""
        return int(np.count_nonzero(self._ink_mask)) / self._s.opaque_px

    @property
    def mid(self) -> float:
        """The rest: soft shading, texture, blur."""
        return max(0.0, 1.0 - self.paper - self.ink)

    @cached_property
    def marks_per_10k_px(self) -> float:
        """Separate small ink marks (glyph-sized blobs) per 10,000 pixels."""
        labels, count = ndi.label(self._ink_mask)
        sizes = np.bincount(labels.ravel())[1:] if count else np.zeros(0, dtype=np.int64)
        # A mark is "small" when it is at most 0.2% of the image: a letter or a word, not a silhouette.
        n = self._s.opaque_px
        return int(((sizes >= 2) & (sizes <= 0.002 * n)).sum()) / (n / 1e4)


class Flatness:
    """How much of the image is flat colour, and how its edges look, after a 3x3 median removes noise.

    Shares are of the pixels whose right and lower neighbours are opaque too (the cut-out border of a
    transparent image is not an edge); each is computed on first use.
    """

    def __init__(self, s: Sample) -> None:
        self._s = s

    @cached_property
    def _smooth(self) -> np.ndarray:
        return filters.median3(self._s.planes)  # kills JPEG and sensor noise

    @cached_property
    def _grad(self) -> np.ndarray:
        """(h-1, w-1) uint8: the largest change to the right or lower neighbour, in any channel."""
        here = self._smooth[:, :-1, :-1]
        right, below = self._smooth[:, :-1, 1:], self._smooth[:, 1:, :-1]
        dx = (np.maximum(here, right) - np.minimum(here, right)).max(axis=0)  # |a - b| without leaving uint8
        dy = (np.maximum(here, below) - np.minimum(here, below)).max(axis=0)
        return np.maximum(dx, dy)

    @cached_property
    def _inside(self) -> np.ndarray | None:
        if self._s.all_opaque:
            return None
        o = self._s.opaque
        return o[:-1, :-1] & o[1:, :-1] & o[:-1, 1:]

    def _share(self, mask: np.ndarray) -> float:
        inside = self._inside
        if inside is None:
            return int(np.count_nonzero(mask)) / max(mask.size, 1)
        return int(np.count_nonzero(mask & inside)) / max(int(np.count_nonzero(inside)), 1)

    @cached_property
    def _strong(self) -> np.ndarray:
        strong = self._grad > 40
        return strong if self._inside is None else strong & self._inside

    @cached_property
    def flat(self) -> float:
        """Share of pixels whose neighbours differ by <= 2 levels in every channel."""
        return self._share(self._grad <= 2)

    @cached_property
    def strong(self) -> float:
        """Share of hard edges (> 40 levels)."""
        return self._share(self._strong)

    @cached_property
    def soft(self) -> float:
        """Share of gentle changes (7..40 levels) over 2 px from a hard edge: shading, texture."""
        # Gentle changes within 2 px of a hard edge are the edge itself, softened by anti-aliasing, JPEG
        # ringing or chroma subsampling; only those farther away are shading or texture.
        near_edge = filters.dilation(self._strong, 5)
        return self._share((self._grad > 6) & (self._grad <= 40) & ~near_edge)

    @cached_property
    def top16(self) -> float:
        """Share of pixels covered by the 16 most common colours (16 levels per channel)."""
        r, g, b = (p >> 4 for p in self._smooth)
        codes = (r.astype(np.uint16) << 8) | (g.astype(np.uint16) << 4) | b
        counts = np.bincount((codes if self._s.all_opaque else codes[self._s.opaque]).ravel(), minlength=4096)
        return float(np.sort(counts)[-16:].sum()) / max(int(counts.sum()), 1)


def oriented_size(image: Image.Image, stored_size: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) of the image as it should be displayed.

    `stored_size`: the size of the file's pixels, when `image` was decoded smaller (JPEG draft mode).
    """
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except (TypeError, ValueError):  # a malformed tag: show the pixels as stored
        orientation = 1
    width, height = stored_size or image.size
    if orientation in (5, 6, 7, 8):  # these four turn the picture by a quarter
        width, height = height, width
    return width, height, orientation


def sample(image: Image.Image, orientation: int, max_side: int) -> Sample:
    """Downscale to at most `max_side` px on the long side, turn upright, and flatten to 8-bit RGB."""
    img = _standard_mode(image)
    scale = max_side / max(img.size)
    if scale < 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        # reducing_gap lets Pillow box-reduce by an integer factor first: a 12 MP image costs ~25 ms. (1.0
        # would halve the cost at 1920x1080, but the face cascade is sensitive to resampling: it turned a
        # cat into a portrait there. Large JPEGs skip most of this anyway: see worker.py, draft mode.)
        img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if orientation in _UNDO_ORIENTATION:
        img = img.transpose(_UNDO_ORIENTATION[orientation])
    if img.mode in ("LA", "RGBA"):
        arr = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = arr[..., 3:] / 255.0
        rgb = arr[..., :3] * alpha + NEUTRAL_GREY * (1.0 - alpha)
        return Sample(np.round(rgb).astype(np.uint8), arr[..., 3] >= 128)
    rgb = np.asarray(img.convert("RGB"))
    return Sample(rgb, np.ones(rgb.shape[:2], dtype=bool))


def _standard_mode(image: Image.Image) -> Image.Image:
    """The image in L, LA, RGB or RGBA, whatever mode it came in."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode in ("La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    if mode.startswith("I") or mode == "F":
        # 16/32-bit and float greys: Pillow's convert("L") clips instead of scaling, so scale here. The
        # range is judged by the largest value: <= 1 float, <= 255 8-bit, <= 65535 16-bit, else its own.
        values = np.asarray(image, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        full = 1.0 if top <= 1.0 else 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        return Image.fromarray(np.clip(values * (255.0 / full), 0, 255).astype(np.uint8))
    try:
        return image.convert("RGB")  # 1, P, CMYK, YCbCr, HSV, RGBX ...
    except ValueError:  # a mode Pillow cannot turn into RGB (LAB): its first band is lightness
        return image.getchannel(0).convert("L")

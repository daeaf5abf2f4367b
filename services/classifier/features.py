"""Measurements the classifier's rules read, taken on a small 8-bit RGB copy of the image.

Each function answers one question about the picture (is there a face, how much of it is paper and ink,
how flat are its colours) with a few plain numbers; `classify.py` holds the thresholds that turn them into
a category.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage as ndi
from skimage.data import lbp_frontal_face_cascade_filename
from skimage.feature import Cascade

NEUTRAL_GREY = 128  # what transparent pixels are composited over
FACE_WINDOW_PX = 24  # the cascade's training window: the smallest face it can see
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

    @property
    def gray(self) -> np.ndarray:
        return self.rgb.astype(np.float32) @ _LUMA


@dataclass(frozen=True)
class PaperInk:
    """How much of the image is light paper, dark ink and neither, after dividing out uneven lighting."""

    bright: float  # share of the image whose local background is light (>= mid-grey)
    paper: float  # share within 15% of the local background
    ink: float  # share at most 60% as bright as the local background
    mid: float  # the rest: soft shading, texture, blur
    colourful: float  # share of clearly coloured pixels (max - min channel > 48)
    marks_per_10k_px: float  # separate small ink marks (glyph-sized blobs) per 10,000 pixels


@dataclass(frozen=True)
class Flatness:
    """How much of the image is flat colour, and how its edges look, after a 3x3 median removes noise."""

    flat: float  # share of pixels whose neighbours differ by <= 2 levels in every channel
    soft: float  # share of gentle changes (7..40 levels) over 2 px from a hard edge: shading, texture
    strong: float  # share of hard edges (> 40 levels)
    top16: float  # share of pixels covered by the 16 most common colours (16 levels per channel)


def oriented_size(image: Image.Image) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) of the image as it should be displayed."""
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except (TypeError, ValueError):  # a malformed tag: show the pixels as stored
        orientation = 1
    width, height = image.size
    if orientation in (5, 6, 7, 8):  # these four turn the picture by a quarter
        width, height = height, width
    return width, height, orientation


def sample(image: Image.Image, orientation: int, max_side: int) -> Sample:
    """Downscale to at most `max_side` px on the long side, turn upright, and flatten to 8-bit RGB."""
    img = _standard_mode(image)
    scale = max_side / max(img.size)
    if scale < 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        # reducing_gap lets Pillow box-reduce by an integer factor first: a 12 MP image costs ~25 ms.
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


_per_thread = threading.local()


def _cascade() -> Cascade:
    # Loading the XML takes ~10 ms: once per thread, since the worker classifies in several threads
    # and the cascade object is not documented as safe to share between them.
    if not hasattr(_per_thread, "cascade"):
        _per_thread.cascade = Cascade(lbp_frontal_face_cascade_filename())
    return _per_thread.cascade


def largest_face(s: Sample, short_side: int, max_long_side: int) -> float:
    """Width of the largest frontal face found, as a share of the image's shorter side (0 when none)."""
    gray = Image.fromarray(np.round(s.gray).astype(np.uint8))
    # Always scan at the same shorter side, enlarging small images too: this cascade's hits depend on the
    # scale, and one fixed scale keeps its behaviour (and the smallest face it can see) the same for all.
    scale = min(short_side / min(gray.size), max_long_side / max(gray.size))
    size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
    if size != gray.size:
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    short = min(gray.size)
    if short < FACE_WINDOW_PX:
        return 0.0
    # step_ratio 1.5 and 4 neighbours: 3x faster than a dense scan, and a lone window on fur or foliage
    # (the classic false positive of this cascade) no longer counts as a face.
    faces = _cascade().detect_multi_scale(
        np.asarray(gray, dtype=np.float32) / 255.0,
        scale_factor=1.2,
        step_ratio=1.5,
        min_size=(FACE_WINDOW_PX, FACE_WINDOW_PX),
        max_size=(short, short),
        min_neighbor_number=4,
    )
    return max((f["width"] / short for f in faces), default=0.0)


def paper_ink(s: Sample) -> PaperInk:
    """Split the image into paper, ink and mid-tones relative to its local background brightness."""
    gray = s.gray
    # A 9x9 grey closing erases dark strokes thinner than 9 px, leaving the paper under them; the box blur
    # smooths it. Dividing by it removes shadows and vignetting, as on a phone photo of a page.
    background = ndi.uniform_filter(ndi.grey_closing(gray, size=(9, 9)), 9)
    norm = gray / np.maximum(background, 1.0)
    n = max(int(s.opaque.sum()), 1)
    paper = float((norm >= 0.85)[s.opaque].sum()) / n
    ink_mask = (norm <= 0.60) & s.opaque
    ink = float(ink_mask.sum()) / n
    rgb = s.rgb[s.opaque]
    colourful = float((rgb.max(axis=1).astype(np.int16) - rgb.min(axis=1) > 48).sum()) / n
    labels, count = ndi.label(ink_mask)
    sizes = np.bincount(labels.ravel())[1:] if count else np.zeros(0, dtype=np.int64)
    # A mark is "small" when it is at most 0.2% of the image: a letter or a word, not a silhouette.
    marks = int(((sizes >= 2) & (sizes <= 0.002 * n)).sum())
    return PaperInk(
        bright=float((background >= 128)[s.opaque].sum()) / n,
        paper=paper,
        ink=ink,
        mid=max(0.0, 1.0 - paper - ink),
        colourful=colourful,
        marks_per_10k_px=marks / (n / 1e4),
    )


def flatness(s: Sample) -> Flatness:
    """Measure flat colour areas and edge hardness on a median-filtered copy (kills JPEG and sensor noise)."""
    smooth = np.asarray(Image.fromarray(s.rgb).filter(ImageFilter.MedianFilter(3)), dtype=np.int16)
    dx = np.abs(np.diff(smooth, axis=1)).max(axis=2)[:-1, :]
    dy = np.abs(np.diff(smooth, axis=0)).max(axis=2)[:, :-1]
    grad = np.maximum(dx, dy)
    # Only pixels whose right and lower neighbours are opaque too: the cut-out border is not an edge.
    inside = s.opaque[:-1, :-1] & s.opaque[1:, :-1] & s.opaque[:-1, 1:]
    strong = (grad > 40) & inside
    # Gentle changes within 2 px of a hard edge are the edge itself, softened by anti-aliasing, JPEG
    # ringing or chroma subsampling; only those farther away are shading or texture.
    near_edge = ndi.binary_dilation(strong, structure=np.ones((5, 5), dtype=bool))
    soft = (grad > 6) & (grad <= 40) & inside & ~near_edge
    n = max(int(inside.sum()), 1)
    q = (smooth[s.opaque] // 16).astype(np.int32)
    counts = np.sort(np.bincount(q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2], minlength=4096))[::-1]
    return Flatness(
        flat=float(((grad <= 2) & inside).sum()) / n,
        soft=float(soft.sum()) / n,
        strong=float(strong.sum()) / n,
        top16=float(counts[:16].sum()) / max(int(counts.sum()), 1),
    )

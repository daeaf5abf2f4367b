"""Decide what an image shows, so the upscaler can pick the model that suits it.

The image is read once, as a copy of at most 512 px on its long side (a large JPEG is decoded straight to
about that size, at libjpeg's 1/2, 1/4 or 1/8 scale: worker.py), turned upright by its EXIF orientation
and flattened to 8-bit RGB (transparent areas over neutral grey, and left out of every share below). The
first rule that holds wins:

1. text: dark ink on light paper. After dividing out uneven lighting (a 9x9 grey closing, blurred, is the
   local paper brightness): the paper is light (>= 70% of the image on a background >= mid-grey), most of
   the image is paper (>= 75% within 15% of it), there is some ink but not a lot (1.5%..35% at <= 60% of
   it), the ink is crisp (>= 30% of the non-paper pixels are ink, not grey blur as on twigs against a
   sky), the page is not colourful (<= 20% clearly coloured pixels) and the ink falls apart into many
   small marks, as letters do (>= 8 per 10,000 px; an icon or a silhouette is one or two big blobs).
   Light text on a dark background is not recognised.
2. anime: flat colour with clean edges, measured after a 3x3 median (so JPEG noise does not count):
   >= 60% of the pixels are flat (neighbours within 2 levels), there are hard edges (>= 0.5% of pixels
   change by > 40 levels), gentle changes (7..40 levels) more than 2 px away from a hard edge are rare
   (<= 1.5x the hard-edge pixels; photos have 2x to 50x: shading, texture, blur) and 16 colours cover
   >= 80% of the picture. Flat graphics (icons, charts, cartoons, cel-shaded art) land here; painted
   illustrations and anime art with soft shading or heavy JPEG noise read as photos (or portraits).
3. portrait: the LBP frontal-face cascade finds a face at least a fifth as wide as the shorter side: a
   face that defines the picture (a head-and-shoulders shot, a small group); the faces in a crowd or a
   street scene are too small for a face model to matter. The cascade scans a grey copy of 128 px on the
   shorter side, where its 24 px window is that fifth (faces.largest_face: a sparse pass over window
   sizes from there up, then a dense pass around the windows that fired, where a face must fire 6 times).
   It comes after rules 1 and 2, which never hold for camera photos, because the cascade also fires on
   drawn faces (a smiley, a cartoon character): those belong with the flat art.
4. photo: everything else, and any image too small (< 16 px a side) or too transparent to judge.

Cost (CPU of one core; bench/classify_cost.py prints it by image size and format): each measurement is
taken when a rule first reads it, and the rules read the cheap ones first, so a photo fails rules 1 and 2
in 1-3 ms (on its colour, then its flatness) and text and flat art are decided in a few ms, whatever the
image's size (beyond the resize to the analysis copy, ~5 ms for a 1920x1080 PNG; a JPEG is decoded small).
Most of the rest of a photo's cost is the face scan of rule 3, 3-5 ms, the same for any image size since
the scan's copy is: its cost follows the number of windows at the smallest face size, which is why
the smallest face is a fifth of the shorter side (a scan down to a tenth, at 256 px, cost ~30 ms).
"""

from __future__ import annotations

import math

from PIL import Image

from services.classifier import faces, features
from shared.messages import Category, Classification

ANALYSIS_MAX_SIDE_PX = 512
FACE_SHORT_SIDE_PX = 128  # the cascade's 24 px window is then MIN_FACE_SHARE of the shorter side
FACE_MAX_LONG_SIDE_PX = 384  # panoramas: keep the scan cheap
MIN_SIDE_PX = 16
MIN_FACE_SCAN_SIDE_PX = 48  # twice the cascade's window: enlarged, a smaller image shows it no face
MIN_OPAQUE_SHARE = 0.01

MIN_FACE_SHARE = 0.18  # a fifth of the shorter side, less the cascade's play (its boxes vary by ~10%)

MIN_BRIGHT_PAPER = 0.70
MIN_PAPER = 0.75
MIN_INK, MAX_INK = 0.015, 0.35
MIN_CRISP_INK = 0.30
MAX_COLOURFUL_TEXT = 0.20
MIN_MARKS_PER_10K_PX = 8.0

MIN_FLAT = 0.60
MIN_STRONG = 0.005
MAX_SOFT_PER_STRONG = 1.5
MIN_TOP16 = 0.80


def classify(image: Image.Image, stored_size: tuple[int, int] | None = None) -> Classification:
    """Classify `image` by content; width and height are those of the upright (EXIF-rotated) image.

    `stored_size`: the size of the pixels in the file, when `image` was decoded smaller than that
    (a JPEG decoded at `draft_size`); the size reported, and the size rules, go by it.
    """
    stored = stored_size or image.size
    width, height, orientation = features.oriented_size(image, stored)
    return Classification(
        category=_category(image, stored, orientation),
        width=width,
        height=height,
        aspect_ratio=round(width / height, 2),
    )


def draft_size(stored_size: tuple[int, int]) -> tuple[int, int]:
    """The least size an image may be decoded at (JPEG draft mode) and still be judged as at full size.

    The analysis copy's size, never under the face scan's minimum side: so every size rule still holds
    as it does for the full image, and the only change is in the resampling.
    """
    scale = min(1.0, ANALYSIS_MAX_SIDE_PX / max(stored_size))
    return (
        max(MIN_FACE_SCAN_SIDE_PX, math.ceil(stored_size[0] * scale)),
        max(MIN_FACE_SCAN_SIDE_PX, math.ceil(stored_size[1] * scale)),
    )


def _category(image: Image.Image, stored_size: tuple[int, int], orientation: int) -> Category:
    if min(stored_size) < MIN_SIDE_PX:
        return Category.PHOTO
    sample = features.sample(image, orientation, ANALYSIS_MAX_SIDE_PX)
    if sample.opaque.mean() < MIN_OPAQUE_SHARE:
        return Category.PHOTO
    # Faces last: the cascade also fires on drawn faces, and the text and flat-art rules never hold for photos.
    if _is_text(features.PaperInk(sample)):
        return Category.TEXT
    if _is_flat_art(features.Flatness(sample)):
        return Category.ANIME
    scan = min(stored_size) >= MIN_FACE_SCAN_SIDE_PX  # a 16 px image enlarged for the scan shows no face
    if scan and faces.largest_face(sample, FACE_SHORT_SIDE_PX, FACE_MAX_LONG_SIDE_PX, MIN_FACE_SHARE) > 0:
        return Category.PORTRAIT
    return Category.PHOTO


def _is_text(p: features.PaperInk) -> bool:
    # Cheapest test first (colour needs no lighting model); `and` stops at the first that fails.
    return (
        p.colourful <= MAX_COLOURFUL_TEXT
        and p.bright >= MIN_BRIGHT_PAPER
        and p.paper >= MIN_PAPER
        and MIN_INK <= p.ink <= MAX_INK
        and p.ink >= MIN_CRISP_INK * (p.ink + p.mid)
        and p.marks_per_10k_px >= MIN_MARKS_PER_10K_PX
    )


def _is_flat_art(f: features.Flatness) -> bool:
    return (
        f.flat >= MIN_FLAT
        and f.strong >= MIN_STRONG
        and f.soft <= MAX_SOFT_PER_STRONG * f.strong
        and f.top16 >= MIN_TOP16
    )

"""Is there a face, and how large: scikit-image's LBP frontal-face cascade over a small grey copy.

The classifier calls a picture a portrait when `largest_face` finds a face at least a given share of the
shorter side wide (services/classifier/classify.py holds that share); features.py takes the grey copy.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image
from skimage.data import lbp_frontal_face_cascade_filename
from skimage.feature import Cascade

from services.classifier.features import Sample

FACE_WINDOW_PX = 24  # the cascade's training window: the smallest face it can see
# The face scan's two passes (largest_face): a window's step is step_ratio x its size / 24 px.
COARSE_SCAN = {"scale_factor": 1.3, "step_ratio": 2.5}
FINE_SCAN = {"scale_factor": 1.2, "step_ratio": 1.0}
FINE_MARGIN, FINE_SMALLEST, FINE_LARGEST = 0.4, 1.25, 1.5  # around a candidate: its size x 1/1.25 .. 1.5
FINE_NEIGHBOURS = 6


_per_thread = threading.local()


def _cascade() -> Cascade:
    # Loading the XML takes ~10 ms: once per thread, since the worker classifies in several threads
    # and the cascade object is not documented as safe to share between them.
    if not hasattr(_per_thread, "cascade"):
        _per_thread.cascade = Cascade(lbp_frontal_face_cascade_filename())
    return _per_thread.cascade


def face_scan_size(size: tuple[int, int], short_side: int, max_long_side: int) -> tuple[int, int]:
    """The (width, height) the face cascade scans an image of `size` at."""
    width, height = size
    scale = min(short_side / min(width, height), max_long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def largest_face(s: Sample, short_side: int, max_long_side: int, min_share: float) -> float:
    """Width of the largest frontal face, as a share of the shorter side; 0 when none is `min_share` or wider.

    Two passes of the cascade over a grey copy of `short_side` px on its shorter side (at most
    `max_long_side` on the long one). The first tries every window size from `min_share` of the shorter side
    up, on a sparse grid (steps of ~10% of the window), and keeps any window that fires: a face fires on it
    as surely as on the second pass's grid, but so do fur and foliage. The second pass scans only around
    those windows, on a dense grid (steps of ~4% of the window, sizes from 0.8x to 1.5x), where a real face
    fires on at least 6 overlapping windows. Skipping the windows under `min_share` (they are most of a
    full scan's, and the small faces they find are not a portrait's) and the dense grid away from the
    candidates cuts the scan ~8-fold.
    """
    gray = Image.fromarray(np.round(s.gray).astype(np.uint8))
    # Always scan at the same shorter side, enlarging small images too: this cascade's hits depend on the
    # scale, and one fixed scale keeps its behaviour (and the smallest face it can see) the same for all.
    size = face_scan_size(gray.size, short_side, max_long_side)
    if size != gray.size:
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(gray, dtype=np.float32) / 255.0
    short = min(pixels.shape)
    smallest = max(FACE_WINDOW_PX, round(min_share * short))
    if short <= smallest:
        return 0.0
    cascade = _cascade()
    candidates = cascade.detect_multi_scale(
        pixels, **COARSE_SCAN, min_size=(smallest, smallest), max_size=(short, short), min_neighbor_number=1
    )
    largest = 0
    for c in sorted(candidates, key=lambda c: c["width"], reverse=True):
        width = c["width"]
        if width * FINE_LARGEST <= largest:  # no face around this one can beat the one found
            break
        # The candidate's box is an average of the windows that fired: the face may be a little off it.
        margin = round(FINE_MARGIN * width)
        top, left = max(0, c["r"] - margin), max(0, c["c"] - margin)
        crop = np.ascontiguousarray(pixels[top : c["r"] + width + margin, left : c["c"] + width + margin])
        low, high = max(smallest, round(width / FINE_SMALLEST)), min(min(crop.shape), round(width * FINE_LARGEST))
        if low >= high:
            continue
        faces = cascade.detect_multi_scale(
            crop, **FINE_SCAN, min_size=(low, low), max_size=(high, high), min_neighbor_number=FINE_NEIGHBOURS
        )
        largest = max([largest, *(f["width"] for f in faces)])
    return largest / short

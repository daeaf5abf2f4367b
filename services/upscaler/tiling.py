"""Where tiles go and how their outputs are put together: pure geometry and host-side assembly (no torch).

RealESRGANer (realesrgan/utils.py) cuts the padded input into `tile` x `tile` cores from the top left, reads
each with `tile_pad` pixels of context on every side (clamped to the image) and keeps exactly the core's area
of the output. A kept pixel equals the untiled output (up to float rounding) when its window holds the
network's whole receptive field, i.e. when tile_pad - feather >= the radius (catalog.receptive_radius); the
default pad is chosen so where that is affordable (options.tile_overlap). This module keeps that grid and
that context, and differs on purpose in three ways:

- Feathering: each tile also keeps `feather` input pixels beyond every inner edge of its core, and two
  neighbours are cross-faded over that overlap with complementary linear ramps (weights w and 1 - w, a
  partition of unity, so the accumulated sum needs no division). RealESRGANer's hard crop shows a seam
  wherever `tile_pad` is shorter than the network's receptive field (Real-ESRGAN#211, #197); a ramp hides it.
  `feather=0` reproduces the hard crop.
- Equal windows: a window (the part of the input the network reads) is core +- tile_pad, shifted inwards
  instead of clamped where it would cross the image border. Every window then has the same shape, so tiles
  can be batched, and a border tile gets more context than in the reference, never less.
- Host assembly: tile outputs arrive already quantised (uint8 / uint16) and are copied into the output
  array; only the overlaps are blended, in small float accumulators, and each output pixel is rounded
  once. Nothing the size of the output exists in float, and nothing image-sized lives on the device.

Other deliberate differences live beside the code they concern: alpha handling (alpha.py), bit depth read
from the file rather than guessed from pixel values (codec.py), fp16 fallback and out-of-memory splitting
(inference.py), the outscale filter (engine.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    """One tile's extent along one axis, in input pixels of the padded image."""

    core: tuple[int, int]  # [start, end): the part of the axis this tile owns
    window: tuple[int, int]  # [start, end): what the network reads (core +- pad, kept inside the image)
    keep: tuple[int, int]  # [start, end): what is taken from the output (core +- feather at inner edges)

    @property
    def length(self) -> int:
        return self.core[1] - self.core[0]


def plan_axis(length: int, tile: int, pad: int, feather: int = 0, *, mod: int = 1) -> list[Span]:
    """Spans covering [0, length) with cores of `tile` pixels from 0 (the last one shorter), as RealESRGANer.

    `tile` <= 0 or >= length gives one span over the whole axis. `tile` and `pad` are rounded up to
    multiples of `mod` (pixel_unshuffle nets need even or x4 pieces); `length` must already be one.
    Feathers are clipped to half the shorter neighbouring core and to `pad`.
    """
    if length % mod:
        raise ValueError(f"length {length} is not a multiple of {mod}")
    if tile <= 0 or tile >= length:
        return [Span((0, length), (0, length), (0, length))]
    tile, pad = _round_up(tile, mod), _round_up(pad, mod)
    starts = list(range(0, length, tile))
    cores = [(start, min(start + tile, length)) for start in starts]
    size = min(tile + 2 * pad, length)
    # Feather of the seam before core i (0 at the image border).
    seams = [0] + [
        min(feather, pad, (cores[i - 1][1] - cores[i - 1][0]) // 2, (cores[i][1] - cores[i][0]) // 2)
        for i in range(1, len(cores))
    ]
    seams.append(0)
    spans = []
    for i, (c0, c1) in enumerate(cores):
        w0 = min(max(c0 - pad, 0), length - size)
        spans.append(Span((c0, c1), (w0, w0 + size), (c0 - seams[i], c1 + seams[i + 1])))
    return spans


def balanced_tile(length: int, max_tile: int, mod: int = 1) -> int:
    """The smallest tile that covers `length` with as few tiles as `max_tile` needs (less waste in the last)."""
    if max_tile <= 0 or length <= max_tile:
        return max_tile
    count = math.ceil(length / max_tile)
    return _round_up(math.ceil(length / count), mod)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def ramp(size: int) -> np.ndarray:
    """Weights rising over `size` pixels, centred on pixel centres: ramp(n) + ramp(n)[::-1] == 1."""
    return ((np.arange(size, dtype=np.float32) + 0.5) / size) if size else np.zeros(0, np.float32)


class Canvas:
    """The output image, filled tile by tile in row-major order with feathered overlaps.

    `rows` and `cols` are the spans of `plan_axis` (input pixels of the padded image); the canvas holds the
    top-left `height` x `width` output pixels (the rest is pre-pad / mod-pad, cropped without a copy).
    Inside a tile row, pixels owned by one tile are copied; a vertical seam is accumulated in float from its
    left and right tiles; a horizontal seam (full width) collects both tile rows. Each is rounded once.
    """

    def __init__(
        self, rows: list[Span], cols: list[Span], scale: int, height: int, width: int, channels: int, dtype: type
    ) -> None:
        self.rows, self.cols, self.scale = rows, cols, scale
        self.pixels: np.ndarray = np.empty((height, width, channels), dtype=dtype)
        self._full_width = cols[-1].core[1] * scale
        self._top: np.ndarray | None = None  # this tile row's upper seam, started by the row above
        self._bottom: np.ndarray | None = None  # this tile row's lower seam, finished by the row below
        self._seam: np.ndarray | None = None  # the vertical seam on the right of the last pasted tile
        self._next = (0, 0)

    def _seam_px(self, spans: list[Span], i: int) -> tuple[int, int]:
        """Output pixels of blending before and after tile i along one axis."""
        before = (spans[i].core[0] - spans[i].keep[0]) * 2 * self.scale
        after = (spans[i].keep[1] - spans[i].core[1]) * 2 * self.scale
        return before, after

    def paste(self, row: int, col: int, tile: np.ndarray) -> None:
        """Add the output of tile (row, col): its `keep` area, (keep rows x scale) x (keep cols x scale) x C."""
        if (row, col) != self._next:
            raise ValueError(f"tiles must arrive in row-major order: expected {self._next}, got {(row, col)}")
        s, ys, xs = self.scale, self.rows[row], self.cols[col]
        y0, x0 = ys.keep[0] * s, xs.keep[0] * s
        top, bottom = self._seam_px(self.rows, row)
        left, right = self._seam_px(self.cols, col)
        h, w = tile.shape[:2]
        wy = np.ones(h, np.float32)
        wy[:top], wy[h - bottom :] = ramp(top), ramp(bottom)[::-1]
        wx = np.ones(w, np.float32)
        wx[:left], wx[w - right :] = ramp(left), ramp(right)[::-1]

        # Rows owned by this tile row: copy the owned columns, blend the vertical seams.
        mid = tile[top : h - bottom]
        my0 = y0 + top
        self._put(my0, x0 + left, mid[:, left : w - right])
        if left:
            assert self._seam is not None
            self._seam += mid[:, :left] * wx[None, :left, None]
            self._put(my0, x0, self._round(self._seam))
        self._seam = mid[:, w - right :] * wx[None, w - right :, None] if right else None

        # Horizontal seams: weighted by both ramps, over the full width.
        if top:
            self._top = self._accumulate(self._top, tile[:top], wy[:top], wx, x0)
        if bottom:
            self._bottom = self._accumulate(self._bottom, tile[h - bottom :], wy[h - bottom :], wx, x0)

        if col + 1 < len(self.cols):
            self._next = (row, col + 1)
            return
        if self._top is not None:
            self._put(y0, 0, self._round(self._top))
        self._top, self._bottom = self._bottom, None
        self._next = (row + 1, 0)

    def _accumulate(self, acc: np.ndarray | None, part: np.ndarray, wy: np.ndarray, wx: np.ndarray, x0: int):
        if acc is None:
            acc = np.zeros((part.shape[0], self._full_width, part.shape[2]), np.float32)
        acc[:, x0 : x0 + part.shape[1]] += part * (wy[:, None, None] * wx[None, :, None])
        return acc

    def _round(self, values: np.ndarray) -> np.ndarray:
        limit = np.iinfo(self.pixels.dtype).max
        return np.clip(np.rint(values), 0, limit).astype(self.pixels.dtype)

    def _put(self, y: int, x: int, values: np.ndarray) -> None:
        """Write `values` at (y, x), dropping what falls outside the canvas (the pre-pad and mod-pad)."""
        height, width = self.pixels.shape[:2]
        h, w = min(values.shape[0], height - y), min(values.shape[1], width - x)
        if h > 0 and w > 0:
            self.pixels[y : y + h, x : x + w] = values[:h, :w]

    def done(self) -> bool:
        return self._next == (len(self.rows), 0)

"""One image on its way through the tile runner: where its tiles are, which are done, and its output canvas.

A plan hands out its tiles in row-major order (`take`), takes their outputs back in the same order (`accept`)
and pastes them into its `tiling.Canvas`. Tiles of plans with the same `key` (same network, window shape,
pixel type and alpha mode) are interchangeable inside one batch, which is how tiles of several tasks share
a forward (batcher.py).

Pasting is host work and stays off the device's thread, which must keep the device fed: the thread that made
the plan (the caller, blocked in `result`) pastes. Outputs computed in another thread (batcher.py's device
thread) are queued for it, copied out of their batch first (on CUDA a batch's pinned buffer is reused two
batches later); the device thread only computes, crops, copies and reports progress (tiles computed).

Failures handled here rather than failing the task:
- A tile whose fp16 output holds NaN or inf (Real-ESRGAN#632) is redone in fp32 (`Stats.fp16_fallbacks`).
- Out of memory on a single tile: the tile is split into quarters and each is retried, recursively, as
  chaiNNer does (`Stats.oom_splits`). Quarters are joined with hard crops, each having read `tile_pad`
  pixels of context.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Hashable

import numpy as np

from services.upscaler.inference import Network, TileRunner, TileSettings, is_out_of_memory
from services.upscaler.tiling import Canvas, plan_axis

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 in input pixels of the padded image
Tile = tuple[int, int]  # row, column
_MIN_SPLIT = 8  # input pixels: a quarter smaller than this is not tried
_arrivals = itertools.count()


class Cancelled(Exception):
    """The caller gave up on this image (its task was revoked, deleted or handed back)."""


def _reflect_pad(image: np.ndarray, bottom: int, right: int) -> np.ndarray:
    if bottom == 0 and right == 0:
        return image
    return np.pad(image, ((0, bottom), (0, right), (0, 0)), mode="reflect")


class ImagePlan:
    """One image's tiles, output canvas and outcome; scheduled by one thread, pasted by the one that made it."""

    def __init__(
        self,
        runner: TileRunner,
        pixels: np.ndarray,
        network: Network,
        job: TileSettings,
        progress: Callable[[float], None] | None = None,
        *,
        priority: int = 0,
        cancel: threading.Event | None = None,
    ) -> None:
        self.runner, self.network, self.job, self.progress = runner, network, job, progress
        self.priority, self.arrival, self.cancel = priority, next(_arrivals), cancel
        self.max_value = 255 if pixels.dtype == np.uint8 else 65535
        self.scale = network.scale
        self.mod = {2: 2, 1: 4}.get(network.scale, 1)
        # RealESRGANer order: reflect pre_pad right/bottom, then reflect up to the fold grid (scales 2 and 1).
        image = _reflect_pad(pixels, job.pre_pad, job.pre_pad)
        height, width = image.shape[:2]
        self.image = _reflect_pad(image, -height % self.mod, -width % self.mod)
        self.pad = -(-job.tile_pad // self.mod) * self.mod
        full_h, full_w = self.image.shape[:2]
        self.rows = plan_axis(full_h, job.tile[0], job.tile_pad, job.feather, mod=self.mod)
        self.cols = plan_axis(full_w, job.tile[1], job.tile_pad, job.feather, mod=self.mod)
        out_h, out_w = pixels.shape[0] * self.scale, pixels.shape[1] * self.scale
        self.canvas = Canvas(self.rows, self.cols, self.scale, out_h, out_w, pixels.shape[2], pixels.dtype.type)
        self.order: list[Tile] = [(r, c) for r in range(len(self.rows)) for c in range(len(self.cols))]
        self.taken = 0  # tiles handed out for a batch
        self.delivered = 0  # tiles computed and handed to the pasting thread
        self.reported = False  # the last tile's progress is reported: nothing more comes from the device thread
        self.done = 0  # tiles pasted
        self._owner = threading.get_ident()  # the thread that pastes (see the module docstring)
        self._arrived: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()  # None: wakes `result`
        self.split = False  # out of memory at one tile a batch: the rest go one by one, quartered
        self.solo = False  # a batch shared with other images failed: this image no longer shares
        self.error: BaseException | None = None
        self.finished = threading.Event()  # failed, or assembled by `result`
        window = (self.rows[0].window[1] - self.rows[0].window[0], self.cols[0].window[1] - self.cols[0].window[0])
        self.key: Hashable = (id(network.net), network.dtype, window, pixels.shape[2], pixels.dtype.str, job.alpha_mode)

    # -- state --------------------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Still wanted and not finished."""
        self.poll_cancel()
        return not self.finished.is_set()

    def poll_cancel(self) -> None:
        """Fail the image once its cancel event is set (callable from any thread)."""
        if self.cancel is not None and self.cancel.is_set():
            self.fail(Cancelled("image cancelled"))

    def remaining(self) -> int:
        return len(self.order) - self.taken

    def fail(self, error: BaseException) -> None:
        if not self.finished.is_set():
            self.error = error
            self.finished.set()
            self._arrived.put(None)

    def result(self, poll_s: float = 0.25) -> np.ndarray:
        """Paste tile outputs as they arrive, in the calling thread; the output once all are in.

        Raises what failed the image; checks the cancel event every `poll_s` while waiting.
        """
        while (self.done < len(self.order) or not self.reported) and self.error is None:
            try:
                output = self._arrived.get(timeout=poll_s)
            except queue.Empty:
                self.poll_cancel()  # a cancelled image frees its caller at once; the device thread skips it
                continue
            if output is not None:
                self._paste(output)
        if self.error is not None:
            raise self.error
        self.finished.set()
        return self.canvas.pixels

    # -- tiles for batches ----------------------------------------------------------------------------------------

    def take(self, count: int) -> list[Tile]:
        tiles = self.order[self.taken : self.taken + count]
        self.taken += len(tiles)
        return tiles

    def give_back(self, count: int) -> None:
        """Return the last `count` taken tiles (their batch could not be submitted)."""
        self.taken -= count

    def window(self, tile: Tile) -> np.ndarray:
        (y0, y1), (x0, x1) = self.rows[tile[0]].window, self.cols[tile[1]].window
        return self.image[y0:y1, x0:x1]

    def opaque(self, window: np.ndarray) -> bool:
        return window.shape[2] in (2, 4) and bool((window[:, :, -1] == self.max_value).all())

    def accept(self, tile: Tile, output: np.ndarray, bad: bool) -> None:
        """Paste a tile's batch output (redone in fp32 first when it holds NaN or inf); finish after the last."""
        row, col = tile
        keep = self._keep(row, col)
        if bad and self.network.fp32 is not None:
            self.runner.stats.fp16_fallbacks += 1
            window = (*self.rows[row].window, *self.cols[col].window)
            self._deliver(self._solve(keep, window, fp32=True), shared=False)
        else:
            self._deliver(self._crop(output, keep, self.rows[row].window[0], self.cols[col].window[0]), shared=True)

    def solve_next(self) -> None:
        """The next tile on its own, quartered as often as memory needs."""
        (row, col) = self.take(1)[0]
        self._deliver(self._solve(self._keep(row, col), None, fp32=False), shared=False)

    def report(self) -> None:
        """Progress after a batch (tiles computed); an exception from the callback fails the image."""
        try:
            if self.progress is not None:
                self.progress(self.delivered / len(self.order))
        except Exception as exc:
            self.fail(exc)
            return
        if self.delivered == len(self.order) and self.error is None:  # the image's last batch: once
            self.runner.stats.images += 1
            self.reported = True  # the caller returns only now, so no progress call comes after it
            self._arrived.put(None)

    def _deliver(self, tile: np.ndarray, *, shared: bool) -> None:
        """Hand a tile's output to the pasting thread; `shared`: a view of a batch buffer that will be reused."""
        self.runner.stats.tiles += 1
        self.delivered += 1
        if threading.get_ident() == self._owner:
            self._paste(tile)  # one image in its own thread (batcher.run_image): paste at once, nothing piles up
        else:
            self._arrived.put(np.array(tile) if shared else tile)

    def _paste(self, tile: np.ndarray) -> None:
        row, col = self.order[self.done]
        try:
            self.canvas.paste(row, col, tile)
        except Exception as exc:
            self.fail(exc)
            return
        self.done += 1

    def _keep(self, row: int, col: int) -> Box:
        ys, xs = self.rows[row], self.cols[col]
        return ys.keep[0], ys.keep[1], xs.keep[0], xs.keep[1]

    def _crop(self, output: np.ndarray, keep: Box, wy0: int, wx0: int) -> np.ndarray:
        s = self.scale
        y0, y1, x0, x1 = keep
        return output[(y0 - wy0) * s : (y1 - wy0) * s, (x0 - wx0) * s : (x1 - wx0) * s]

    # -- one box at a time, splitting on out-of-memory ----------------------------------------------------------

    def _solve(self, keep: Box, window: Box | None, fp32: bool) -> np.ndarray:
        """The output of `keep` computed alone (from `window`, else keep +- tile_pad), quartered on OOM."""
        y0, y1, x0, x1 = keep
        if window is None:
            height, width = self.image.shape[:2]
            window = (*self._around(y0, y1, height), *self._around(x0, x1, width))
        wy0, wy1, wx0, wx1 = window
        runner = self.runner
        pixels = self.image[wy0:wy1, wx0:wx1]
        opaque = self.opaque(pixels)
        try:
            output, bad = runner.forward_one(pixels, self.network, self.job, self.max_value, fp32, opaque)
            if bad and not fp32 and self.network.fp32 is not None:
                runner.stats.fp16_fallbacks += 1
                output, bad = runner.forward_one(pixels, self.network, self.job, self.max_value, True, opaque)
            return self._crop(output, keep, wy0, wx0)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            runner.release()
            ys, xs = self._halves(y0, y1), self._halves(x0, x1)
            if len(ys) * len(xs) == 1:
                raise
            runner.stats.oom_splits += 1
        s = self.scale
        result = np.empty(((y1 - y0) * s, (x1 - x0) * s, self.canvas.pixels.shape[2]), self.canvas.pixels.dtype)
        for qy0, qy1 in ys:
            for qx0, qx1 in xs:
                part = self._solve((qy0, qy1, qx0, qx1), None, fp32)
                result[(qy0 - y0) * s : (qy1 - y0) * s, (qx0 - x0) * s : (qx1 - x0) * s] = part
        return result

    def _around(self, start: int, end: int, length: int) -> tuple[int, int]:
        """[start - pad, end + pad) widened to the fold grid and clipped to the image."""
        low = max(0, (start - self.pad) // self.mod * self.mod)
        return low, min(length, -(-(end + self.pad) // self.mod) * self.mod)

    def _halves(self, start: int, end: int) -> list[tuple[int, int]]:
        middle = (start + end) // 2 // self.mod * self.mod
        if end - start < 2 * _MIN_SPLIT or not start < middle < end:
            return [(start, end)]
        return [(start, middle), (middle, end)]

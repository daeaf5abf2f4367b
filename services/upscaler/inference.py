"""Running a network over a picture's pixels in tiles: the input stays on the host, batches of tiles go to the
device, and the output is assembled on the host (`tiling.Canvas`).

On the device each batch is converted from integers to [0, 1], alpha-premultiplied or split off, run through
the network (fp16 and channels_last on CUDA), post-processed (alpha, grey, clamp) and quantised before it
comes back, so only uint8/uint16 cross the bus. On CUDA the uploads and downloads run on their own stream
from pinned buffers, one batch ahead: while the network runs batch k, batch k-1 is downloaded and pasted.

Failures handled here rather than failing the task:
- A tile whose fp16 output holds NaN or inf (Real-ESRGAN#632) is redone in fp32 (`Stats.fp16_fallbacks`).
- Out of memory: the batch is halved; at one tile, the tile is split into quarters and each is retried,
  recursively, as chaiNNer does (`Stats.oom_splits`); later tiles of that image go straight to quarters.
  Quarters are joined with hard crops, each having read `tile_pad` pixels of context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from services.upscaler import alpha as alpha_ops
from services.upscaler.tiling import Canvas, plan_axis

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 in input pixels of the padded image
_MIN_SPLIT = 8  # input pixels: a quarter smaller than this is not tried


@dataclass
class Stats:
    """Counters an upscaler process exports (they only grow)."""

    images: int = 0
    tiles: int = 0
    batches: int = 0
    fp16_fallbacks: int = 0  # tiles redone in fp32 because the fp16 output held NaN or inf
    oom_splits: int = 0  # tiles (or quarters) split into quarters after running out of device memory
    oom_batch_halvings: int = 0


@dataclass(frozen=True)
class Network:
    """A net ready to run, and how: native scale, dtype, and where to get its fp32 twin for broken fp16 tiles."""

    net: nn.Module
    scale: int
    dtype: torch.dtype = torch.float32
    fp32: Callable[[], nn.Module] | None = None


@dataclass(frozen=True)
class Job:
    """How to cut and treat one image."""

    tile: tuple[int, int] = (0, 0)  # tile height, width in input pixels; 0: one tile along that axis
    tile_pad: int = 10
    pre_pad: int = 0
    feather: int = 5  # input pixels cross-faded on each side of an inner tile edge (0: RealESRGANer's crops)
    batch: int = 1
    alpha_mode: str = alpha_ops.PREMULTIPLIED


_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or a RuntimeError saying memory ran out (CPU allocator, other backends)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _OOM_MESSAGES)


def _reflect_pad(image: np.ndarray, bottom: int, right: int) -> np.ndarray:
    if bottom == 0 and right == 0:
        return image
    return np.pad(image, ((0, bottom), (0, right), (0, 0)), mode="reflect")


class TileRunner:
    """Runs networks over H x W x C uint8/uint16 arrays on one device; keeps streams and pinned buffers."""

    def __init__(self, device: torch.device, stats: Stats | None = None, *, channels_last: bool = False) -> None:
        self.device = device
        self.stats = stats if stats is not None else Stats()
        self.channels_last = channels_last
        self._cuda = device.type == "cuda"
        # Uploads and downloads each get a stream (CUDA only).
        self._streams = (torch.cuda.Stream(device), torch.cuda.Stream(device)) if self._cuda else None
        self._pinned: dict[tuple[str, int], Tensor] = {}
        self._submitted = 0

    @torch.inference_mode()
    def run(
        self, pixels: np.ndarray, network: Network, job: Job, progress: Callable[[float], None] | None = None
    ) -> np.ndarray:
        """The (H * scale) x (W * scale) x C output of `network` over `pixels` (same dtype and channels)."""
        return _Run(self, pixels, network, job, progress).execute()

    # -- device work ------------------------------------------------------------------------------------------

    def forward(
        self, raw: Tensor, network: Network, job: Job, max_value: int, fp32: bool, opaque: bool = False
    ) -> tuple[Tensor, Tensor]:
        """B x h x w x C integers on the device -> (B x H x W x C quantised output, B flags of non-finite output).

        `opaque`: the batch's alpha is all 1, so it runs as RGB. 16-bit outputs come back as int16 offset by
        -32768 (`to_host` undoes it): transfers stay 2 bytes a sample.
        """
        net = network.fp32() if fp32 and network.fp32 is not None else network.net
        dtype = torch.float32 if fp32 else network.dtype
        x = raw.permute(0, 3, 1, 2).float().div_(max_value)
        batch, channels = x.shape[:2]
        colour = x[:, :3] if channels >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        alpha = x[:, channels - 1 :] if channels in (2, 4) else None
        mode = job.alpha_mode if alpha is not None and not opaque else None
        if mode == alpha_ops.PREMULTIPLIED and alpha is not None:
            colour = colour * alpha
        inputs = colour
        if alpha is not None and mode in (alpha_ops.PREMULTIPLIED, alpha_ops.NETWORK):
            inputs = torch.cat([colour, alpha.expand(-1, 3, -1, -1)])  # alpha as a grey image, as RealESRGANer
        inputs = inputs.to(dtype)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        y = net(inputs).float()
        bad = ~torch.isfinite(y).flatten(1).all(1)
        if y.shape[0] > batch:
            bad = bad[:batch] | bad[batch:]
        out = y[:batch].clamp(0, 1)
        if alpha is not None:
            if mode is None:
                up = torch.ones_like(out[:, :1])
            elif mode == alpha_ops.RESIZE:
                up = alpha_ops.lanczos_upscale(alpha, network.scale).clamp_(0, 1)
            else:
                up = alpha_ops.luma(y[batch:]).clamp(0, 1)
                if mode == alpha_ops.PREMULTIPLIED:
                    resized = alpha_ops.lanczos_upscale(alpha, network.scale).clamp_(0, 1)
                    out, up = alpha_ops.unpremultiply(out, up, resized, max_value)
        if channels <= 2:
            out = alpha_ops.luma(out)
        if alpha is not None:
            out = torch.cat([out, up], dim=1)
        out = out.permute(0, 2, 3, 1).mul(max_value).round_()
        quantised = out.to(torch.uint8) if max_value == 255 else out.sub_(32768).to(torch.int16)
        return quantised.contiguous(), bad

    def pinned(self, name: str, slot: int, like: Tensor | np.ndarray) -> Tensor:
        """A page-locked host buffer shaped like `like`, reused while the shape stays the same."""
        dtype = like.dtype if isinstance(like, Tensor) else torch.from_numpy(like[:0]).dtype
        buffer = self._pinned.get((name, slot))
        if buffer is None or buffer.shape != tuple(like.shape) or buffer.dtype != dtype:
            buffer = torch.empty(tuple(like.shape), dtype=dtype, pin_memory=True)
            self._pinned[(name, slot)] = buffer
        return buffer

    def release(self) -> None:
        """After running out of memory: let in-flight copies finish and hand cached blocks back."""
        if self._cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()


def to_host(quantised: np.ndarray) -> np.ndarray:
    """uint8 stays; int16 (16-bit data offset by -32768) becomes uint16."""
    if quantised.dtype == np.int16:
        return quantised.view(np.uint16) ^ np.uint16(0x8000)
    return quantised


@dataclass
class _Handle:
    tiles: list[tuple[int, int]]
    output: Tensor
    bad: Tensor
    event: Any = None  # torch.cuda.Event once the download is queued


class _Run:
    """One image through a TileRunner."""

    def __init__(
        self,
        runner: TileRunner,
        pixels: np.ndarray,
        network: Network,
        job: Job,
        progress: Callable[[float], None] | None,
    ) -> None:
        self.runner, self.network, self.job, self.progress = runner, network, job, progress
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
        self.total = len(self.rows) * len(self.cols)
        self.done = 0

    def execute(self) -> np.ndarray:
        order = [(r, c) for r in range(len(self.rows)) for c in range(len(self.cols))]
        batch = max(1, self.job.batch)
        index, pending, split = 0, None, False
        while index < len(order) or pending is not None:
            current = None
            if index < len(order) and not split:
                group = order[index : index + batch]
                try:
                    current = self._submit(group, batch)
                    index += len(group)
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    self.runner.release()
                    if batch > 1:
                        batch = max(1, batch // 2)
                        self.runner.stats.oom_batch_halvings += 1
                        continue
                    split = True
            if pending is not None:
                self._finish(pending)
                pending = None
            if current is not None:
                pending = current
            elif split and index < len(order):
                row, col = order[index]
                self._paste(row, col, self._solve(self._keep(row, col), None, fp32=False))
                self._report()
                index += 1
        self.runner.stats.images += 1
        return self.canvas.pixels

    # -- batches --------------------------------------------------------------------------------------------

    def _window(self, row: int, col: int) -> np.ndarray:
        (y0, y1), (x0, x1) = self.rows[row].window, self.cols[col].window
        return self.image[y0:y1, x0:x1]

    def _opaque(self, window: np.ndarray) -> bool:
        return window.shape[2] in (2, 4) and bool((window[:, :, -1] == self.max_value).all())

    def _keep(self, row: int, col: int) -> Box:
        ys, xs = self.rows[row], self.cols[col]
        return ys.keep[0], ys.keep[1], xs.keep[0], xs.keep[1]

    def _submit(self, tiles: list[tuple[int, int]], batch: int) -> _Handle:
        runner = self.runner
        windows = [self._window(r, c) for r, c in tiles]
        opaque = all(self._opaque(w) for w in windows)
        if not runner._cuda:
            raw = torch.from_numpy(np.stack(windows))
            output, bad = runner.forward(raw, self.network, self.job, self.max_value, False, opaque)
            return _Handle(tiles, output, bad)
        # Same batch shape every time (cuDNN autotuning, torch.compile): the last batch repeats its last tile.
        windows += [windows[-1]] * (batch - len(windows))
        slot = runner._submitted % 2
        staged = runner.pinned("in", slot, np.empty((len(windows), *windows[0].shape), windows[0].dtype))
        np.stack(windows, out=staged.numpy())
        assert runner._streams is not None
        upload, download = runner._streams
        compute = torch.cuda.current_stream(runner.device)
        # Uploads and downloads have a stream each, so batch k+1 goes up and batch k-1 comes down while the
        # network runs batch k; events order each copy after exactly what it needs.
        with torch.cuda.stream(upload):
            raw = staged.to(runner.device, non_blocking=True)
            uploaded = torch.cuda.Event()
            uploaded.record(upload)
        compute.wait_event(uploaded)
        raw.record_stream(compute)
        output, bad = runner.forward(raw, self.network, self.job, self.max_value, False, opaque)
        computed = torch.cuda.Event()
        computed.record(compute)
        download.wait_event(computed)
        with torch.cuda.stream(download):
            host = runner.pinned("out", slot, output).copy_(output, non_blocking=True)
            host_bad = runner.pinned("bad", slot, bad).copy_(bad, non_blocking=True)
            output.record_stream(download)
            bad.record_stream(download)
            event = torch.cuda.Event()
            event.record(download)
        runner._submitted += 1
        return _Handle(tiles, host, host_bad, event)

    def _finish(self, handle: _Handle) -> None:
        if handle.event is not None:
            handle.event.synchronize()
        outputs = to_host(handle.output.numpy())
        bad = handle.bad.numpy()
        self.runner.stats.batches += 1
        for i, (row, col) in enumerate(handle.tiles):
            keep = self._keep(row, col)
            if bad[i] and self.network.fp32 is not None:
                self.runner.stats.fp16_fallbacks += 1
                window = (*self.rows[row].window, *self.cols[col].window)
                tile = self._solve(keep, window, fp32=True)
            else:
                tile = self._crop(outputs[i], keep, self.rows[row].window[0], self.cols[col].window[0])
            self._paste(row, col, tile)
        self._report()

    def _paste(self, row: int, col: int, tile: np.ndarray) -> None:
        self.canvas.paste(row, col, tile)
        self.runner.stats.tiles += 1
        self.done += 1

    def _report(self) -> None:
        """Progress once per batch (or split tile); an exception from the callback aborts the run."""
        if self.progress is not None:
            self.progress(self.done / self.total)

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
        window_pixels = self.image[wy0:wy1, wx0:wx1]
        opaque = self._opaque(window_pixels)
        try:
            raw = torch.from_numpy(np.ascontiguousarray(window_pixels))[None].to(runner.device)
            output, bad = runner.forward(raw, self.network, self.job, self.max_value, fp32, opaque)
            if bool(bad.any()) and not fp32 and self.network.fp32 is not None:
                runner.stats.fp16_fallbacks += 1
                output, bad = runner.forward(raw, self.network, self.job, self.max_value, True, opaque)
            return self._crop(to_host(output.cpu().numpy())[0], keep, wy0, wx0)
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

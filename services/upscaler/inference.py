"""Device work for tiled inference: one batch of equal-sized windows through a network, and back.

On the device each batch is converted from integers to [0, 1], alpha-premultiplied or split off, run through
the network (fp16 and channels_last on CUDA), post-processed (alpha, grey, clamp) and quantised before it
comes back, so only uint8/uint16 cross the bus. On CUDA the uploads and downloads run on their own streams
from pinned buffers: `submit` queues a batch and returns at once, `collect` waits for its output, so the
caller keeps one batch in flight while the previous one is pasted (see batcher.py).

This module is the bottom of the upscaler and imports none of the modules above it: plan.py (one image's
tiles) decides what happens to a tile on failure, batcher.py (across images) which tiles make a batch, and
engine.py which network and tile sizes an image gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from services.upscaler import alpha as alpha_ops


@dataclass
class Stats:
    """Counters an upscaler process exports (they only grow)."""

    images: int = 0
    tiles: int = 0
    batches: int = 0
    fp16_fallbacks: int = 0  # tiles redone in fp32 because the fp16 output held NaN or inf
    oom_splits: int = 0  # tiles (or quarters) split into quarters after running out of device memory
    oom_batch_halvings: int = 0
    oom_batch_recoveries: int = 0  # halved batch sizes raised again after clean batches
    shared_batches: int = 0  # batches holding tiles of more than one image (tasks waiting together)


@dataclass(frozen=True)
class Network:
    """A net ready to run, and how: native scale, dtype, and where to get its fp32 twin for broken fp16 tiles."""

    net: nn.Module
    scale: int
    dtype: torch.dtype = torch.float32
    fp32: Callable[[], nn.Module] | None = None


@dataclass(frozen=True)
class TileSettings:
    """How to cut and treat one image."""

    tile: tuple[int, int] = (0, 0)  # tile height, width in input pixels; 0: one tile along that axis
    tile_pad: int = 10
    pre_pad: int = 0
    feather: int = 5  # input pixels cross-faded on each side of an inner tile edge (0: RealESRGANer's crops)
    batch: int = 1  # most tiles in one forward (tiles of other images of the same shape may fill it)
    alpha_mode: str = alpha_ops.PREMULTIPLIED


_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or a RuntimeError saying memory ran out (CPU allocator, other backends)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _OOM_MESSAGES)


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

    def submit(
        self, windows: list[np.ndarray], network: Network, job: TileSettings, max_value: int, opaque: bool, pad_to: int
    ) -> Batch:
        """Start the forward of equal-shaped `windows`; on CUDA it returns before the output is ready.

        On CUDA the batch is padded to `pad_to` windows (repeating the last) so that shapes repeat for cuDNN's
        autotuner and torch.compile.
        """
        if not self._cuda:
            raw = torch.from_numpy(np.stack(windows))
            output, bad = self.forward(raw, network, job, max_value, False, opaque)
            return Batch(output, bad)
        windows = windows + [windows[-1]] * (pad_to - len(windows))
        slot = self._submitted % 2
        staged = self.pinned("in", slot, np.empty((len(windows), *windows[0].shape), windows[0].dtype))
        np.stack(windows, out=staged.numpy())
        assert self._streams is not None
        upload, download = self._streams
        compute = torch.cuda.current_stream(self.device)
        # Uploads and downloads have a stream each, so batch k+1 goes up and batch k-1 comes down while the
        # network runs batch k; events order each copy after exactly what it needs.
        with torch.cuda.stream(upload):
            raw = staged.to(self.device, non_blocking=True)
            uploaded = torch.cuda.Event()
            uploaded.record(upload)
        compute.wait_event(uploaded)
        raw.record_stream(compute)
        output, bad = self.forward(raw, network, job, max_value, False, opaque)
        computed = torch.cuda.Event()
        computed.record(compute)
        download.wait_event(computed)
        with torch.cuda.stream(download):
            host = self.pinned("out", slot, output).copy_(output, non_blocking=True)
            host_bad = self.pinned("bad", slot, bad).copy_(bad, non_blocking=True)
            output.record_stream(download)
            bad.record_stream(download)
            event = torch.cuda.Event()
            event.record(download)
        self._submitted += 1
        return Batch(host, host_bad, event)

    def collect(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Wait for a submitted batch: (B x H x W x C uint8/uint16 outputs, B flags of non-finite output)."""
        if batch.event is not None:
            batch.event.synchronize()
        self.stats.batches += 1
        return to_host(batch.output.numpy()), batch.bad.numpy()

    def forward_one(
        self, window: np.ndarray, network: Network, job: TileSettings, max_value: int, fp32: bool, opaque: bool
    ) -> tuple[np.ndarray, bool]:
        """One window, synchronously: (output, whether it holds NaN or inf)."""
        raw = torch.from_numpy(np.ascontiguousarray(window))[None].to(self.device)
        output, bad = self.forward(raw, network, job, max_value, fp32, opaque)
        return to_host(output.cpu().numpy())[0], bool(bad.any())

    # -- device work ------------------------------------------------------------------------------------------

    def forward(
        self, raw: Tensor, network: Network, job: TileSettings, max_value: int, fp32: bool, opaque: bool = False
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
class Batch:
    """A submitted forward: its (host) output and flags, and on CUDA the event that says they are there."""

    output: Tensor
    bad: Tensor
    event: Any = None

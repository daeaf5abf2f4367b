"""Automatic tile size and batch: as large as the device's free memory and the model allow, within caps.

The cost of a model is measured once per net as bytes per input pixel: on CUDA from the peak allocation
of a probe forward; on the CPU (where torch reports no peak) estimated from the largest activation any
layer produces, times a factor for what is alive at once. Budgets: half the free CUDA memory (the rest
for cuDNN workspaces, fragmentation and the quantised outputs), a fixed amount on the CPU, which bounds
the process's resident memory whatever the image size.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from services.upscaler.tiling import balanced_tile

CPU_BUDGET_BYTES = 512 << 20
CUDA_FREE_FRACTION = 0.5
MAX_TILE = {"cuda": 512, "cpu": 192}  # beyond these, larger tiles stop paying (CPU: caches; GPU: occupancy)
MAX_BATCH = {"cuda": 16, "cpu": 1}
MIN_TILE = 32
_PROBE = 64  # input pixels a side
_LIVE_FACTOR = 4  # activations alive at once, in units of the largest layer output (RRDB concatenations)

_per_pixel: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, torch.dtype], float]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Sizing:
    tile: tuple[int, int]  # tile height, width in input pixels (0: the whole axis)
    batch: int


def bytes_per_pixel(net: nn.Module, device: torch.device, dtype: torch.dtype, in_channels: int = 3) -> float:
    """Device memory one input pixel costs in a forward of `net` (cached per net, device type and dtype)."""
    cache = _per_pixel.setdefault(net, {})
    key = (device.type, dtype)
    if key not in cache:
        probe = torch.rand(1, in_channels, _PROBE, _PROBE, device=device).to(dtype)
        with torch.inference_mode():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                net(probe)
                torch.cuda.synchronize(device)
                cache[key] = (torch.cuda.max_memory_allocated(device) - before) / _PROBE**2
            else:
                cache[key] = _LIVE_FACTOR * _largest_output(net, probe) * probe.element_size() / _PROBE**2
    return cache[key]


def _largest_output(net: nn.Module, probe: Tensor) -> int:
    largest = probe.numel()

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal largest
        if isinstance(output, Tensor):
            largest = max(largest, output.numel())

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        net(probe)
    finally:
        for handle in handles:
            handle.remove()
    return largest


def budget_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FREE_FRACTION)
    return CPU_BUDGET_BYTES


def choose(
    net: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    image_size: tuple[int, int],
    *,
    tile: int | None,
    tile_pad: int,
    batch: int | None = None,
    mod: int = 1,
    passes: int = 1,
) -> Sizing:
    """Tile and batch for one image (height, width): `tile` None picks one, 0 or N are kept (N x N tiles).

    `passes`: images per tile through the network (2 when alpha goes through it as a second image).
    """
    kind = "cuda" if device.type == "cuda" else "cpu"
    height, width = image_size
    if tile is not None and batch is not None:
        return Sizing((tile, tile), batch)
    per_pixel = bytes_per_pixel(net, device, dtype) * passes
    budget = budget_bytes(device)
    if tile is None:
        side = min(MAX_TILE[kind], math.isqrt(int(budget / per_pixel)) - 2 * tile_pad)
        side = max(MIN_TILE, side // 8 * 8)
        tiles = (balanced_tile(height, side, mod), balanced_tile(width, side, mod))
    else:
        tiles = (tile, tile)
    if batch is None:
        window = [min(t + 2 * tile_pad, n) if t else n for t, n in zip(tiles, image_size, strict=True)]
        # Not capped by this image's tile count: tiles of other images waiting may fill the batch (batcher.py).
        batch = int(budget // (per_pixel * window[0] * window[1]))
        batch = max(1, min(batch, MAX_BATCH[kind]))
    return Sizing(tiles, batch)

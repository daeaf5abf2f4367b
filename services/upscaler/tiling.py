"""Tiled inference with the semantics of Real-ESRGAN's `RealESRGANer` (realesrgan/utils.py).

pre_pad: reflect-pad the right and bottom edges before inference and crop the output afterwards.
mod-pad: scale 2 and 1 nets fold pixels (pixel_unshuffle), so the input is padded to a multiple of 2 / 4.
tile / tile_pad: the input is cut into tile x tile squares, each read with tile_pad extra pixels of context
on every side, and only the tile's own area of the output is kept, so seams vanish when tile_pad covers the
net's receptive field. outscale: the network output is resized with Lanczos to round(input * outscale).

Unlike RealESRGANer, the padded input stays on the host and the output is assembled on the host as 8-bit
(the value RealESRGANer rounds to anyway), so device memory holds one tile at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F


def _pad_right_bottom(img: Tensor, pad_w: int, pad_h: int) -> Tensor:
    if pad_w == 0 and pad_h == 0:
        return img
    # Reflection needs more pixels than the pad; a tiny image falls back to repeating its edge.
    mode = "reflect" if pad_w < img.shape[-1] and pad_h < img.shape[-2] else "replicate"
    return F.pad(img, (0, pad_w, 0, pad_h), mode=mode)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@torch.inference_mode()
def infer(
    net: nn.Module,
    image: np.ndarray,
    scale: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    tile: int = 0,
    tile_pad: int = 10,
    pre_pad: int = 0,
    progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Run `net` over an H x W x 3 uint8 RGB array and return the (H*scale) x (W*scale) x 3 uint8 output.

    `tile` 0 runs the whole image at once. `progress(fraction)` is called after each tile; an exception it
    raises propagates and stops the run.
    """
    height, width = image.shape[:2]
    img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    img = _pad_right_bottom(img, pre_pad, pre_pad)
    mod = {2: 2, 1: 4}.get(scale, 1)
    padded_h, padded_w = img.shape[-2:]
    img = _pad_right_bottom(img, (-padded_w) % mod, (-padded_h) % mod)
    in_h, in_w = img.shape[-2:]

    if tile <= 0:
        tile, tile_pad = max(in_h, in_w), 0
    # Tile edges and context must stay on the fold grid, or pixel_unshuffle sees odd sizes.
    tile, tile_pad = _round_up(tile, mod), _round_up(tile_pad, mod)
    tiles_x, tiles_y = math.ceil(in_w / tile), math.ceil(in_h / tile)
    output = np.empty((in_h * scale, in_w * scale, 3), dtype=np.uint8)

    for ty in range(tiles_y):
        for tx in range(tiles_x):
            x0, y0 = tx * tile, ty * tile
            x1, y1 = min(x0 + tile, in_w), min(y0 + tile, in_h)
            px0, py0 = max(x0 - tile_pad, 0), max(y0 - tile_pad, 0)
            px1, py1 = min(x1 + tile_pad, in_w), min(y1 + tile_pad, in_h)
            piece = img[:, :, py0:py1, px0:px1].to(device=device, dtype=dtype)
            out = net(piece)
            ox, oy = (x0 - px0) * scale, (y0 - py0) * scale
            out = out[0, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale]
            # Same quantisation as RealESRGANer: clamp to [0, 1], then round(x * 255).
            out = out.float().clamp_(0, 1).mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).cpu()
            output[y0 * scale : y1 * scale, x0 * scale : x1 * scale] = out.numpy()
            if progress is not None:
                progress((ty * tiles_x + tx + 1) / (tiles_x * tiles_y))

    return output[: height * scale, : width * scale]


def enhance(
    net: nn.Module,
    image: Image.Image,
    scale: int,
    *,
    outscale: float | None = None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    tile: int = 0,
    tile_pad: int = 10,
    pre_pad: int = 0,
    progress: Callable[[float], None] | None = None,
) -> Image.Image:
    """Upscale an RGB image with `net` (native `scale`), then Lanczos-resize to `outscale` if it differs."""
    if image.mode != "RGB":
        raise ValueError(f"enhance expects an RGB image, got mode {image.mode}")
    array = infer(
        net,
        np.asarray(image),
        scale,
        device=device,
        dtype=dtype,
        tile=tile,
        tile_pad=tile_pad,
        pre_pad=pre_pad,
        progress=progress,
    )
    result = Image.fromarray(array)
    if outscale is not None and outscale != scale:
        result = result.resize(scaled_size(image.size, outscale), Image.Resampling.LANCZOS)
    return result


def scaled_size(size: tuple[int, int], outscale: float) -> tuple[int, int]:
    """round(width * outscale) x round(height * outscale), never below 1 pixel."""
    return max(1, round(size[0] * outscale)), max(1, round(size[1] * outscale))

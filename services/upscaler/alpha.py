"""Pixel arithmetic done on the device around the network: alpha (three modes), grey, and Lanczos weights.

Alpha modes (`UpscaleOptions.alpha_mode`):
- "premultiplied" (default): the colour is multiplied by alpha before the network, so a colour hidden under
  alpha 0 (garbage, often black) cannot bleed into visible neighbours; alpha goes through the network as a
  grey image (sharper edges than a resize: on children-alpha.png downscaled x4 and upscaled back, alpha
  PSNR 30.1 dB against 26.2 for Lanczos), and the colour is divided by it, so colour and alpha edges
  agree. Where the Lanczos-resized alpha is exactly 0 or 1 (flat areas) that value is kept: the network
  maps flat 1 to 251/255 along the image border, which would make an opaque picture's frame see-through.
- "network": RealESRGANer's default: straight colour through the network, alpha through it too (grey)
  with nothing kept exact: hidden colours bleed into visible edges (Real-ESRGAN#291).
- "resize": straight colour through the network, alpha Lanczos-resized (cheapest: one network pass).
A batch whose alpha is opaque everywhere runs as RGB with alpha 1 in every mode.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

# The values of UpscaleOptions.alpha_mode (options.ALPHA_MODES); spelled out so that this module needs no
# pydantic (the GPU benchmark imports the inference modules alone).
PREMULTIPLIED, NETWORK, RESIZE = "premultiplied", "network", "resize"
_LUMA = (0.299, 0.587, 0.114)  # OpenCV's RGB -> grey weights, as RealESRGANer uses (BGR2GRAY)
_LANCZOS_SUPPORT = 3.0


def luma(rgb: Tensor) -> Tensor:
    """B x 3 x H x W -> B x 1 x H x W grey."""
    return rgb[:, 0:1] * _LUMA[0] + rgb[:, 1:2] * _LUMA[1] + rgb[:, 2:3] * _LUMA[2]


def unpremultiply(colour: Tensor, alpha: Tensor, resized: Tensor, max_value: int) -> tuple[Tensor, Tensor]:
    """Straight colour and final alpha from the network's premultiplied `colour` and `alpha` (all in [0, 1]).

    Where the Lanczos-`resized` alpha rounds to 1 the alpha is 1 and the colour is taken as is; where it
    rounds to 0 both are 0; elsewhere colour / alpha, clamped. Then opaque areas equal an RGB run.
    """
    half_step = 0.5 / max_value
    opaque, clear = resized >= 1 - half_step, resized <= half_step
    alpha = torch.where(opaque, 1.0, torch.where(clear, 0.0, alpha))
    divided = (colour / alpha.clamp_min(half_step)).clamp_(0, 1)
    colour = torch.where(opaque, colour, torch.where(alpha > half_step, divided, 0.0))
    return colour, alpha


@functools.lru_cache(maxsize=64)
def _taps(size: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's Lanczos taps (libImaging/Resample.c, precompute_coeffs) for an x`scale` upsampling of `size`.

    Returns (indices, weights), both (size * scale) x K; unused taps point at pixel 0 with weight 0.
    """
    centre = (np.arange(size * scale) + 0.5) / scale
    first = np.maximum(np.trunc(centre - _LANCZOS_SUPPORT + 0.5), 0).astype(np.int64)
    last = np.minimum(np.trunc(centre + _LANCZOS_SUPPORT + 0.5), size).astype(np.int64)
    index = first[:, None] + np.arange(int((last - first).max()))[None, :]
    offset = index - centre[:, None] + 0.5
    weights = np.sinc(offset) * np.sinc(offset / _LANCZOS_SUPPORT) * (index < last[:, None])
    weights /= weights.sum(axis=1, keepdims=True)
    return np.where(index < last[:, None], index, 0), weights.astype(np.float32)


def _resample(planes: Tensor, dim: int, scale: int) -> Tensor:
    index, weights = _taps(planes.shape[dim], scale)
    shape = [1] * planes.ndim
    shape[dim] = -1
    out = None
    for k in range(index.shape[1]):
        picked = planes.index_select(dim, torch.from_numpy(index[:, k]).to(planes.device))
        term = picked.mul_(torch.from_numpy(weights[:, k]).to(planes.device).view(shape))
        out = term if out is None else out.add_(term)
    assert out is not None
    return out


def lanczos_upscale(planes: Tensor, scale: int) -> Tensor:
    """B x C x H x W in [0, 1] -> B x C x (H * scale) x (W * scale) float32, as Pillow's Lanczos resize.

    Same weights, edges and pass order as Pillow (rows first, clipped to [0, 1] in between).
    """
    return _resample(_resample(planes.float(), -1, scale).clamp_(0, 1), -2, scale)

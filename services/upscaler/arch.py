"""The two published Real-ESRGAN architectures, state-dict compatible with the official .pth files.

`RRDBNet` follows basicsr (`basicsr/archs/rrdbnet_arch.py`), `SRVGGNetCompact` follows Real-ESRGAN
(`realesrgan/archs/srvgg_arch.py`); parameter names and module order match, so official checkpoints load
with `strict=True`. We carry our own copies because `basicsr` no longer imports with current torchvision.
`from_state_dict` reads the architecture and its hyper-parameters from key names and tensor shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ResidualDenseBlock(nn.Module):
    """Five densely connected convs; the output is scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, residual scaling 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator as in basicsr; scale 2 and 1 fold the input with pixel_unshuffle first."""

    def __init__(
        self,
        num_in_ch: int,
        num_out_ch: int,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        scale: int = 4,
    ) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, not {scale}")
        self.scale = scale
        # The network always upsamples x4; smaller scales fold pixels into channels beforehand.
        unshuffled_ch = num_in_ch * {4: 1, 2: 4, 1: 16}[scale]
        self.conv_first = nn.Conv2d(unshuffled_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.scale == 2:
            feat = F.pixel_unshuffle(x, 2)
        elif self.scale == 1:
            feat = F.pixel_unshuffle(x, 4)
        else:
            feat = x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact net: convs at low resolution, pixel_shuffle, plus the upsampled input."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: str = "prelu",
    ) -> None:
        super().__init__()
        self.upscale = upscale
        self.scale = upscale  # same attribute name as RRDBNet, for callers that handle both
        self.body = nn.ModuleList([nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)])
        for _ in range(num_conv):
            self.body.append(nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.body.append(_activation(act_type, num_feat))
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU(inplace=True)
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)
    raise ValueError(f"unknown act_type {act_type!r}")


def detect(state_dict: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """Return (architecture name, constructor kwargs) read from a state dict's keys and shapes.

    Raises ValueError when the keys match neither architecture.
    """
    if "conv_first.weight" in state_dict and "body.0.rdb1.conv1.weight" in state_dict:
        first = state_dict["conv_first.weight"]
        num_out_ch = state_dict["conv_last.weight"].shape[0]
        # conv_first sees num_in_ch * 4 channels at scale 2 and * 16 at scale 1 (pixel_unshuffle).
        fold = first.shape[1] // num_out_ch
        scale = {1: 4, 4: 2, 16: 1}.get(fold)
        if scale is None or first.shape[1] % num_out_ch:
            raise ValueError(f"RRDBNet: cannot infer scale from conv_first input channels {first.shape[1]}")
        blocks = {int(m.group(1)) for key in state_dict if (m := re.match(r"body\.(\d+)\.rdb1\.", key))}
        return "RRDBNet", {
            "num_in_ch": first.shape[1] // fold,
            "num_out_ch": num_out_ch,
            "num_feat": first.shape[0],
            "num_block": len(blocks),
            "num_grow_ch": state_dict["body.0.rdb1.conv1.weight"].shape[0],
            "scale": scale,
        }
    if "body.0.weight" in state_dict and state_dict["body.0.weight"].ndim == 4:
        first = state_dict["body.0.weight"]
        conv_indices = sorted(
            int(m.group(1))
            for key, value in state_dict.items()
            if (m := re.fullmatch(r"body\.(\d+)\.weight", key)) and value.ndim == 4
        )
        last = conv_indices[-1]
        if "body.1.weight" not in state_dict:
            # relu and leakyrelu carry no parameters, so the file cannot tell them apart.
            raise ValueError("SRVGGNetCompact without PReLU weights: activation type is ambiguous")
        num_in_ch = first.shape[1]
        out_ch = state_dict[f"body.{last}.weight"].shape[0]
        upscale = round((out_ch / num_in_ch) ** 0.5)
        if upscale * upscale * num_in_ch != out_ch:
            raise ValueError(f"SRVGGNetCompact: cannot infer upscale from {out_ch} output channels")
        return "SRVGGNetCompact", {
            "num_in_ch": num_in_ch,
            "num_out_ch": num_in_ch,
            "num_feat": first.shape[0],
            "num_conv": (last - 2) // 2,
            "upscale": upscale,
            "act_type": "prelu",
        }
    raise ValueError("state dict matches neither RRDBNet nor SRVGGNetCompact")


ARCHITECTURES: dict[str, type[nn.Module]] = {"RRDBNet": RRDBNet, "SRVGGNetCompact": SRVGGNetCompact}


def from_state_dict(state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Build the matching architecture and load `state_dict` into it strictly (eval mode)."""
    name, kwargs = detect(state_dict)
    net = ARCHITECTURES[name](**kwargs)
    net.load_state_dict(state_dict, strict=True)
    return net.eval()

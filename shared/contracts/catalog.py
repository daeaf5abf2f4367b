"""The official Real-ESRGAN weights (where to get them, how to check them) and which serves which category.

URLs come from xinntao/Real-ESRGAN `inference_realesrgan.py`; upstream publishes no checksums, so sizes and
sha256 values are the ones pinned by OpenModelDB and other independent tables (see ../shared/models/README.md
in the reference folder beside the checkout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.messages import Category

OFFICIAL_URL_PREFIX = "https://github.com/xinntao/Real-ESRGAN/releases/download/"


@dataclass(frozen=True)
class ModelSpec:
    """One official weight file and the network it fits."""

    name: str
    filename: str
    url: str
    size_bytes: int
    sha256: str
    arch: str  # "RRDBNet" | "SRVGGNetCompact" (services.upscaler.arch)
    arch_kwargs: dict[str, Any] = field(hash=False)
    scale: int
    selectable: bool = True  # False: a helper file no task may name (the wdn half of a dni blend)

    @property
    def receptive_radius(self) -> int:
        """Input pixels, each way, that one output pixel depends on: a window with this much context
        beyond the pixels kept from it computes them exactly as the whole image does."""
        return receptive_radius(self.arch, self.arch_kwargs)


def receptive_radius(arch: str, kwargs: dict[str, Any]) -> int:
    """The receptive-field radius, in input pixels, of `arch` built with `kwargs` (see ModelSpec).

    Every 3x3 conv at input resolution adds one pixel. SRVGGNetCompact chains num_conv + 2 of them; the
    upsampled input it adds is pointwise. RRDBNet: conv_first, 5 per dense block (the longest path through
    its dense connections), 3 blocks per RRDB, conv_body; the four convs after the x2 and x4 nearest
    upsamplings reach 2 more pixels at worst; all of it at the folded resolution (x2 and x1 nets
    pixel_unshuffle by 2 and 4 first), so a folded pixel is 2 or 4 input pixels.
    """
    if arch == "SRVGGNetCompact":
        return int(kwargs["num_conv"]) + 2
    if arch == "RRDBNet":
        fold = {4: 1, 2: 2, 1: 4}[kwargs["scale"]]
        return (1 + 15 * int(kwargs["num_block"]) + 1 + 2) * fold
    raise ValueError(f"unknown architecture {arch!r}")


def _rrdb(num_block: int, scale: int = 4) -> dict[str, Any]:
    return {
        "num_in_ch": 3,
        "num_out_ch": 3,
        "num_feat": 64,
        "num_block": num_block,
        "num_grow_ch": 32,
        "scale": scale,
    }


def _compact(num_conv: int, upscale: int = 4) -> dict[str, Any]:
    return {
        "num_in_ch": 3,
        "num_out_ch": 3,
        "num_feat": 64,
        "num_conv": num_conv,
        "upscale": upscale,
        "act_type": "prelu",
    }


def _spec(
    name: str,
    release: str,
    size_bytes: int,
    sha256: str,
    arch: str,
    kwargs: dict[str, Any],
    scale: int,
    selectable: bool = True,
) -> ModelSpec:
    filename = f"{name}.pth"
    url = f"{OFFICIAL_URL_PREFIX}{release}/{filename}"
    return ModelSpec(name, filename, url, size_bytes, sha256, arch, kwargs, scale, selectable)


# fmt: off
_TABLE: tuple[ModelSpec, ...] = (
    _spec("RealESRGAN_x4plus", "v0.1.0", 67040989,
          "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", "RRDBNet", _rrdb(23), 4),
    _spec("RealESRNet_x4plus", "v0.1.1", 67040989,
          "a820b9bde89a874d7599d545567308ce6c128fc8754a53208eda016d40aa81df", "RRDBNet", _rrdb(23), 4),
    _spec("RealESRGAN_x4plus_anime_6B", "v0.2.2.4", 17938799,
          "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da", "RRDBNet", _rrdb(6), 4),
    _spec("RealESRGAN_x2plus", "v0.2.1", 67061725,
          "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", "RRDBNet", _rrdb(23, 2), 2),
    _spec("realesr-animevideov3", "v0.2.5.0", 2504012,
          "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d", "SRVGGNetCompact",
          _compact(16), 4),
    _spec("realesr-general-x4v3", "v0.2.5.0", 4885111,
          "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292", "SRVGGNetCompact",
          _compact(32), 4),
    _spec("realesr-general-wdn-x4v3", "v0.2.5.0", 4885111,
          "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca", "SRVGGNetCompact",
          _compact(32), 4, selectable=False),
    _spec("RealESRGANv2-animevideo-xsx2", "v0.2.3.0", 2419014,
          "27985aa2198711ecd72f9bb274ec7b164e018fc9ce2933daaa7c7ab36a2bd3fe", "SRVGGNetCompact",
          _compact(16, 2), 2),
    _spec("RealESRGANv2-animevideo-xsx4", "v0.2.3.0", 2502086,
          "5e04b111c16d5b40deb8f8062d09fdff72fa80281fb9607be23b62650c08daff", "SRVGGNetCompact",
          _compact(16), 4),
)
# fmt: on

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _TABLE}

# Real-ESRGAN's denoise_strength s blends [x4v3, wdn-x4v3] state dicts with weights [s, 1 - s] ("dni").
DENOISE_MODEL = "realesr-general-x4v3"
DENOISE_HELPER = "realesr-general-wdn-x4v3"

ROUTES: dict[Category, str] = {
    Category.PORTRAIT: "RealESRGAN_x4plus",
    Category.PHOTO: "RealESRGAN_x4plus",
    Category.ANIME: "RealESRGAN_x4plus_anime_6B",
    Category.TEXT: "realesr-general-x4v3",
}


def selectable_names() -> list[str]:
    """Names a task may ask for in `kwargs.model` (every official model but helper files)."""
    return [name for name, spec in MODELS.items() if spec.selectable]


def get(name: str) -> ModelSpec:
    """The spec of an official model; ValueError naming the known ones when `name` is not one."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None

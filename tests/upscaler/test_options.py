"""The tile pad a task gets: receptive-field radii per model, the default per model, and what it buys.

Tiled output equals untiled output within 1/255 (fp32) when every kept pixel's window holds the model's
receptive field: the default pad does that for the compact models, and the old fixed default of 10 did not.
"""

from __future__ import annotations

from typing import cast

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from services.api.tasks import accepted
from services.upscaler import arch, weights
from services.upscaler.batcher import run_image
from services.upscaler.inference import Network, TileRunner, TileSettings
from shared.contracts import catalog
from shared.contracts.options import PRACTICAL_TILE_PAD, tile_overlap, validate_options
from shared.messages import UpscaleOptions
from tests.upscaler.conftest import ANIMEVIDEO, IMAGES, shared_file

CPU = torch.device("cpu")


def _reach(net: nn.Module, arch_name: str, kwargs: dict, scale: int) -> int:
    """How far (input pixels, rows) a change of one input pixel moves outputs, worst case over fold phases.

    Positive weights, no biases and a black image: every path from the pixel adds to the output (nothing
    cancels, nothing is rounded away), so the pixels that change are exactly those that depend on it.
    A pixel is kept whole with its fold cell (pixel_unshuffle), so the distance is to that cell's near edge.
    """
    fold = {4: 1, 2: 2, 1: 4}[scale] if arch_name == "RRDBNet" else 1
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in net.named_parameters():
            fan_in = param[0].numel() if param.ndim == 4 else 1
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.rand(param.shape, generator=generator) / fan_in + 0.01)
    radius = catalog.receptive_radius(arch_name, kwargs)
    height, width = 2 * radius + 8 * fold, 4 * fold
    reach = 0
    for phase in range(fold):
        row = radius + 4 * fold + phase
        image = torch.zeros(1, 3, height, width, dtype=torch.float64)
        image[0, :, row, 0] = 1
        with torch.inference_mode():
            changed = (net(image) != 0).any(dim=3).any(dim=1)[0].nonzero().flatten()
        cells = changed // scale // fold * fold  # the fold cell (first input row) of each changed output row
        reach = max(reach, int((cells - row).max()), int((row - cells - fold + 1).max()))
    return reach


@pytest.mark.parametrize(
    ("arch_name", "kwargs"),
    [
        ("SRVGGNetCompact", {"num_feat": 4, "num_conv": 1, "upscale": 4}),
        ("SRVGGNetCompact", {"num_feat": 4, "num_conv": 5, "upscale": 2}),
        ("RRDBNet", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_block": 1, "num_grow_ch": 2, "scale": 4}),
        ("RRDBNet", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_block": 2, "num_grow_ch": 2, "scale": 2}),
        ("RRDBNet", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_block": 1, "num_grow_ch": 2, "scale": 1}),
    ],
)
def test_receptive_radius_is_how_far_one_pixel_reaches(arch_name: str, kwargs: dict) -> None:
    net = arch.ARCHITECTURES[arch_name](**kwargs).double().eval()
    scale = kwargs["scale"] if arch_name == "RRDBNet" else kwargs["upscale"]
    assert _reach(net, arch_name, kwargs, scale) == catalog.receptive_radius(arch_name, kwargs)


def test_catalog_radii() -> None:
    radii = {name: spec.receptive_radius for name, spec in catalog.MODELS.items()}
    assert radii["realesr-animevideov3"] == 18 and radii["realesr-general-x4v3"] == 34
    assert radii["RealESRGAN_x4plus"] == 349 and radii["RealESRGAN_x2plus"] == 698
    assert radii["RealESRGAN_x4plus_anime_6B"] == 94


def test_default_pad_covers_the_field_of_compact_models() -> None:
    unset = UpscaleOptions()
    validate_options(unset)
    assert tile_overlap(unset, "realesr-animevideov3") == (18, 0)
    assert tile_overlap(unset, "RealESRGANv2-animevideo-xsx2") == (18, 0)
    assert tile_overlap(unset, "realesr-general-x4v3") == (34, 0)
    # A configured feather is blended on top of the field, not cut out of it.
    assert tile_overlap(unset, "realesr-general-x4v3", feather=6) == (40, 6)


def test_default_pad_of_rrdb_models_stays_practical() -> None:
    for name in ("RealESRGAN_x4plus", "RealESRGAN_x2plus", "RealESRGAN_x4plus_anime_6B"):
        assert tile_overlap(UpscaleOptions(), name) == (PRACTICAL_TILE_PAD, PRACTICAL_TILE_PAD // 2) == (10, 5)
        assert tile_overlap(UpscaleOptions(), name, feather=0) == (10, 0)


def test_a_clients_tile_pad_is_kept_as_before() -> None:
    for name in ("realesr-animevideov3", "RealESRGAN_x4plus"):
        assert tile_overlap(UpscaleOptions(tile_pad=10), name) == (10, 5)
        assert tile_overlap(UpscaleOptions(tile_pad=0), name) == (0, 0)
        assert tile_overlap(UpscaleOptions(tile_pad=64), name) == (64, 32)
        assert tile_overlap(UpscaleOptions(tile_pad=7), name, feather=2) == (7, 2)
    assert UpscaleOptions.model_validate({"tile_pad": None}, strict=True).tile_pad is None


def test_the_api_document_says_the_same() -> None:
    kwargs = jsonschema.Draft202012Validator(accepted.KWARGS)
    assert kwargs.is_valid({"tile_pad": None}) and kwargs.is_valid({"tile_pad": 0}) and kwargs.is_valid({})
    assert not kwargs.is_valid({"tile_pad": 65}) and not kwargs.is_valid({"tile_pad": True})
    properties = cast(dict[str, dict[str, str]], accepted.KWARGS["properties"])
    assert f"{PRACTICAL_TILE_PAD} for the RRDBNet models" in properties["tile_pad"]["description"]


# -- what the default buys, with real weights -------------------------------------------------------------------


def _run(net: nn.Module, pixels: np.ndarray, tile: int, overlap: tuple[int, int]) -> np.ndarray:
    pad, feather = overlap
    return run_image(
        TileRunner(CPU), pixels, Network(net, 4), TileSettings(tile=(tile, tile), tile_pad=pad, feather=feather)
    )


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(largest difference, how many values differ at all)."""
    d = np.abs(a.astype(int) - b.astype(int))
    return int(d.max()), int(np.count_nonzero(d))


@pytest.fixture(scope="module")
def animevideo() -> nn.Module:
    return weights.load_model("realesr-animevideov3", shared_file(ANIMEVIDEO).parent, CPU).net


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """512 x 448: the largest crop of a real photo in the shared images (OST_009 is 448 wide)."""
    return np.asarray(Image.open(shared_file(IMAGES / "OST_009.png")).convert("RGB"))[:512]


@pytest.fixture(scope="module")
def untiled(animevideo: nn.Module, photo: np.ndarray) -> np.ndarray:
    return _run(animevideo, photo, 0, (0, 0))


@pytest.mark.parametrize("tile", [128, 64])
def test_default_pad_makes_tiles_exact_with_real_weights(
    animevideo: nn.Module, photo: np.ndarray, untiled: np.ndarray, tile: int
) -> None:
    tiled = _run(animevideo, photo, tile, tile_overlap(UpscaleOptions(), "realesr-animevideov3"))
    largest, count = _diff(tiled, untiled)
    # Float rounding only (fp32, CPU): measured 0 values differing of 11,010,048 at both tile sizes.
    assert largest <= 1 and count <= tiled.size // 10_000, (largest, count)


def test_the_old_default_pad_of_10_was_not_within_1_255(
    animevideo: nn.Module, photo: np.ndarray, untiled: np.ndarray
) -> None:
    old = _run(animevideo, photo, 128, tile_overlap(UpscaleOptions(tile_pad=10), "realesr-animevideov3"))
    largest, count = _diff(old, untiled)
    assert largest > 1 and count > 10_000, (largest, count)  # measured: up to 5/255, 236,538 values


def test_default_pad_makes_tiles_exact_for_the_deeper_compact_net() -> None:
    # realesr-general-x4v3's depth (32 convs, radius 34) with random weights: exactness is a matter of
    # geometry, not of what the weights learned. He-initialised convs keep the signal alive through the
    # depth (the default init lets it fade, and then any pad looks exact).
    torch.manual_seed(0)
    net = arch.SRVGGNetCompact(num_feat=16, num_conv=32, upscale=4).eval()
    convs = [layer for layer in net.body if isinstance(layer, nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, a=0.25)
        convs[-1].weight *= 0.1
    pixels = np.random.default_rng(0).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    untiled = _run(net, pixels, 0, (0, 0))
    default = _run(net, pixels, 48, tile_overlap(UpscaleOptions(), "realesr-general-x4v3"))
    old = _run(net, pixels, 48, tile_overlap(UpscaleOptions(tile_pad=10), "realesr-general-x4v3"))
    assert _diff(default, untiled)[0] <= 1 and _diff(old, untiled)[0] > 1

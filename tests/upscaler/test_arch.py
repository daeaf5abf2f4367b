"""The two architectures: shapes, state-dict round trips, detection, and the real official checkpoint."""

from __future__ import annotations

import pytest
import torch

from services.upscaler import arch, weights
from shared.contracts import catalog
from tests.upscaler.conftest import ANIMEVIDEO, shared_file, small_compact, small_rrdb


def _round_trip(net: torch.nn.Module, height: int = 24, width: int = 32) -> torch.Tensor:
    rebuilt = arch.from_state_dict(net.state_dict())
    x = torch.rand(1, 3, height, width)
    with torch.inference_mode():
        expected, got = net(x), rebuilt(x)
    torch.testing.assert_close(got, expected)
    return got


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_rrdbnet_round_trips_and_scales(scale: int) -> None:
    net = small_rrdb(scale)
    name, kwargs = arch.detect(net.state_dict())
    assert name == "RRDBNet"
    expected = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 16, "num_block": 2, "num_grow_ch": 8}
    assert kwargs == {**expected, "scale": scale}
    assert _round_trip(net).shape == (1, 3, 24 * scale, 32 * scale)


def test_rrdbnet_default_layout_matches_the_official_table() -> None:
    # Key names and shapes of the 23-block net, checked without running it.
    net = arch.RRDBNet(3, 3)
    state = net.state_dict()
    assert "body.22.rdb3.conv5.weight" in state and "conv_hr.weight" in state
    assert arch.detect(state) == ("RRDBNet", catalog.get("RealESRGAN_x4plus").arch_kwargs)
    assert sum(p.numel() for p in net.parameters()) == 16_697_987


@pytest.mark.parametrize("upscale", [4, 2])
def test_compact_round_trips_and_scales(upscale: int) -> None:
    net = small_compact(upscale)
    name, kwargs = arch.detect(net.state_dict())
    assert name == "SRVGGNetCompact"
    assert kwargs["num_conv"] == 2 and kwargs["num_feat"] == 8 and kwargs["upscale"] == upscale
    assert _round_trip(net).shape == (1, 3, 24 * upscale, 32 * upscale)


def test_detect_rejects_other_state_dicts() -> None:
    with pytest.raises(ValueError, match="neither"):
        arch.detect(torch.nn.Linear(2, 2).state_dict())


def test_official_animevideov3_loads_strictly() -> None:
    state = weights.read_state_dict(shared_file(ANIMEVIDEO))
    assert arch.detect(state) == ("SRVGGNetCompact", catalog.get("realesr-animevideov3").arch_kwargs)
    net = arch.from_state_dict(state)  # load_state_dict(strict=True) inside
    assert sum(p.numel() for p in net.parameters()) == 621_424
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 10, 12)).shape == (1, 3, 40, 48)

"""Alpha: no halos from hidden colours, exact flat areas, the three modes, and Pillow-equal Lanczos weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from services.upscaler import alpha
from services.upscaler.alpha import lanczos_upscale
from services.upscaler.batcher import run_image
from services.upscaler.inference import Network, TileRunner, TileSettings
from shared.contracts.options import ALPHA_MODES
from tests.upscaler.conftest import IMAGES, shared_file, small_compact

CPU = torch.device("cpu")


def _run(pixels: np.ndarray, mode: str, **job: object) -> np.ndarray:
    net = small_compact(seed=4)
    return run_image(TileRunner(CPU), pixels, Network(net, 4), TileSettings(alpha_mode=mode, **job))  # type: ignore[arg-type]


def _hidden(colour: tuple[int, int, int]) -> np.ndarray:
    """Opaque grey on the left, fully transparent on the right with `colour` hidden under alpha 0."""
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[:, :16] = (120, 130, 140, 255)
    rgba[:, 16:] = (*colour, 0)
    return rgba


@pytest.mark.parametrize("tile", [(0, 0), (16, 16)])
def test_a_colour_hidden_under_alpha_0_does_not_bleed(tile: tuple[int, int]) -> None:
    red, blue = _run(_hidden((255, 0, 0)), "premultiplied", tile=tile), _run(_hidden((0, 0, 255)), "premultiplied")
    np.testing.assert_array_equal(red, blue)  # the hidden colour does not matter at all
    visible = red[..., 3] > 0
    assert visible[:, :60].all() and not visible[:, 80:].any()  # 3 pixels of Lanczos support past the edge
    # Straight colour through the network (RealESRGANer) lets the hidden red into the visible edge.
    straight_red, straight_blue = _run(_hidden((255, 0, 0)), "network"), _run(_hidden((0, 0, 255)), "network")
    shown = straight_red[..., 3] >= 128
    assert (straight_red[..., 0].astype(int) - straight_blue[..., 0])[shown].max() > 5


def test_flat_alpha_stays_exact_and_opaque_pictures_equal_rgb() -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (32, 40, 4), dtype=np.uint8)
    rgba[:16, :, 3], rgba[16:, :, 3] = 0, 255
    for mode in ("premultiplied", "resize"):
        alpha = _run(rgba, mode, tile=(16, 16))[..., 3]
        assert alpha[:48].max() == 0 and alpha[80:].min() == 255  # Lanczos rings 12 px around the edge
    rgba[..., 3] = 255
    np.testing.assert_array_equal(_run(rgba, "premultiplied")[..., :3], _run(rgba[..., :3], "premultiplied"))


def test_network_mode_runs_alpha_through_the_network() -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    network, resize = _run(rgba, "network")[..., 3], _run(rgba, "resize")[..., 3]
    lanczos = np.asarray(Image.fromarray(rgba[..., 3]).resize((64, 64), Image.Resampling.LANCZOS))
    assert np.abs(resize.astype(int) - lanczos).max() <= 1
    assert np.abs(network.astype(int) - lanczos).mean() > 5


def test_grey_with_alpha_keeps_two_channels() -> None:
    la = np.random.default_rng(2).integers(0, 256, (12, 20, 2), dtype=np.uint8)
    out = _run(la, "premultiplied", tile=(8, 8))
    assert out.shape == (48, 80, 2)


def test_modes_agree_with_the_options() -> None:
    assert (alpha.PREMULTIPLIED, alpha.NETWORK, alpha.RESIZE) == ALPHA_MODES


def test_lanczos_weights_match_pillow() -> None:
    alpha = np.asarray(Image.open(shared_file(IMAGES / "children-alpha.png")).getchannel("A"))[100:180, 200:300]
    expected = np.asarray(Image.fromarray(alpha).resize((400, 320), Image.Resampling.LANCZOS)).astype(int)
    got = lanczos_upscale(torch.from_numpy(alpha.astype(np.float32) / 255)[None, None], 4)[0, 0]
    got = np.round(got.clamp(0, 1).numpy() * 255).astype(int)
    assert np.abs(got - expected).max() <= 1

"""Tiled inference: RealESRGANer's pre_pad / mod-pad / tile / tile_pad / outscale semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from services.upscaler import tiling, weights
from tests.upscaler.conftest import ANIMEVIDEO, IMAGES, shared_file, small_compact, small_rrdb

CPU = torch.device("cpu")


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_tiled_equals_untiled_on_a_real_photo() -> None:
    model = weights.load_model("realesr-animevideov3", shared_file(ANIMEVIDEO).parent, CPU)
    photo = np.asarray(Image.open(shared_file(IMAGES / "0030.jpg")).convert("RGB"))[60:140, 50:150]
    whole = tiling.infer(model.net, photo, 4, device=CPU, tile=0)
    with torch.inference_mode():
        direct = model.net(torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255)
    direct = (direct[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(whole, direct)
    # 17 3x3 convs see 17 pixels each way, so 20 pixels of context make tiles exact up to float noise.
    tiled = tiling.infer(model.net, photo, 4, device=CPU, tile=48, tile_pad=20)
    assert whole.shape == tiled.shape == (320, 400, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_tiles_report_progress_in_order() -> None:
    seen: list[float] = []
    out = tiling.infer(small_compact(), _noise(40, 70), 4, device=CPU, tile=32, tile_pad=8, progress=seen.append)
    assert out.shape == (160, 280, 3)
    assert seen == [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0]


def test_progress_exception_aborts_the_run() -> None:
    calls: list[float] = []

    def abort(fraction: float) -> None:
        calls.append(fraction)
        raise RuntimeError("task revoked")

    with pytest.raises(RuntimeError, match="task revoked"):
        tiling.infer(small_compact(), _noise(64, 64), 4, device=CPU, tile=32, progress=abort)
    assert calls == [0.25]


@pytest.mark.parametrize("tile", [0, 33])
def test_scale2_rrdb_handles_odd_sizes_pre_pad_and_odd_tiles(tile: int) -> None:
    # Odd sizes need the mod-pad; an odd tile must still give pixel_unshuffle even pieces.
    out = tiling.infer(small_rrdb(scale=2), _noise(37, 45), 2, device=CPU, tile=tile, tile_pad=5, pre_pad=3)
    assert out.shape == (74, 90, 3)


def test_pre_pad_crops_back_and_survives_tiny_images() -> None:
    net = small_compact()
    assert tiling.infer(net, _noise(5, 3), 4, device=CPU, pre_pad=10).shape == (20, 12, 3)
    assert tiling.infer(net, _noise(20, 24), 4, device=CPU, pre_pad=10, tile=16).shape == (80, 96, 3)


def test_outscale_resizes_the_network_output() -> None:
    image = Image.fromarray(_noise(30, 50))
    assert tiling.enhance(small_compact(), image, 4, outscale=2, device=CPU).size == (100, 60)
    assert tiling.enhance(small_compact(), image, 4, outscale=1.5, device=CPU).size == (75, 45)
    assert tiling.enhance(small_compact(), image, 4, device=CPU).size == (200, 120)

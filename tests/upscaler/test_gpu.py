"""CUDA-only paths: fp16 with channels_last, batches through pinned memory and copy streams, auto sizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from services.upscaler import memory
from services.upscaler.batcher import run_image
from services.upscaler.engine import Upscaler
from services.upscaler.inference import Network, TileRunner, TileSettings
from shared.messages import Category, UpscaleOptions
from tests.upscaler.conftest import ANIMEVIDEO, IMAGES, shared_file, small_compact

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
ANIME = "realesr-animevideov3"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float(10 * np.log10(255**2 / max(np.mean(diff**2), 1e-12)))


def test_cuda_fp16_matches_cpu_fp32() -> None:
    photo = Image.open(shared_file(IMAGES / "0030.jpg"))
    options = UpscaleOptions(model=ANIME, tile=64)
    gpu = Upscaler(shared_file(ANIMEVIDEO).parent, device="cuda").upscale(photo, Category.ANIME, options)
    cpu = Upscaler(ANIMEVIDEO.parent, device="cpu").upscale(photo, Category.ANIME, options)
    assert gpu.device.startswith("cuda") and gpu.image.size == cpu.image.size
    assert _psnr(np.asarray(gpu.image), np.asarray(cpu.image)) > 40


def test_pipelined_batches_equal_single_tiles_on_cuda() -> None:
    cuda = torch.device("cuda")
    net = small_compact().to(cuda)
    pixels = np.random.default_rng(0).integers(0, 256, (150, 230, 4), dtype=np.uint8)
    runner = TileRunner(cuda)
    one = run_image(runner, pixels, Network(net, 4), TileSettings(tile=(32, 32), batch=1))
    many = run_image(
        runner, pixels, Network(net, 4), TileSettings(tile=(32, 32), batch=7)
    )  # 40 tiles: a short last batch
    sixteen = run_image(runner, pixels.astype(np.uint16) * 257, Network(net, 4), TileSettings(tile=(32, 32), batch=7))
    assert np.abs(one.astype(int) - many).max() <= 1
    assert np.abs(sixteen.astype(int) // 257 - many).max() <= 1
    cpu = run_image(TileRunner(torch.device("cpu")), pixels, Network(small_compact(), 4), TileSettings(tile=(32, 32)))
    assert np.abs(cpu.astype(int) - many).max() <= 1


def test_auto_sizing_uses_free_memory() -> None:
    cuda = torch.device("cuda")
    net = small_compact().to(cuda).half()
    sizing = memory.choose(net, cuda, torch.float16, (2000, 3000), tile=None, tile_pad=10)
    assert sizing.tile[0] >= 256 and sizing.batch >= 2


def test_cuda_fp16_nan_falls_back_to_fp32() -> None:
    cuda = torch.device("cuda")
    net = small_compact().to(cuda)

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(net(x.float()), float("nan")).half()

    runner = TileRunner(cuda, channels_last=True)
    out = run_image(
        runner,
        np.full((64, 64, 3), 90, np.uint8),
        Network(Broken(), 4, torch.float16, lambda: net),
        TileSettings(tile=(32, 32), batch=4),
    )
    assert runner.stats.fp16_fallbacks == 4 and out.shape == (256, 256, 3)

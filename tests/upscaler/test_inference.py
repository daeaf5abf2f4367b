"""The tile runner on the CPU: exactness against a plain forward, batching, progress, 16-bit, NaN and OOM recovery."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from services.upscaler import weights
from services.upscaler.batcher import run_image
from services.upscaler.inference import Network, TileRunner, TileSettings, is_out_of_memory
from tests.upscaler.conftest import ANIMEVIDEO, IMAGES, shared_file, small_compact, small_rrdb
from tests.upscaler.fakecuda import FakeEvent, FakeStream

CPU = torch.device("cpu")


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _run(net: nn.Module, pixels: np.ndarray, scale: int = 4, **job: object) -> np.ndarray:
    return run_image(TileRunner(CPU), pixels, Network(net, scale), TileSettings(**job))  # type: ignore[arg-type]


def plain_forward(net: nn.Module, rgb: np.ndarray) -> np.ndarray:
    """The straightforward reference: the whole image through the net in fp32, clamp, round (RealESRGANer)."""
    with torch.inference_mode():
        x = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
        y = net(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(y * 255).astype(np.uint8)


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.fixture(scope="module")
def animevideo() -> nn.Module:
    return weights.load_model("realesr-animevideov3", shared_file(ANIMEVIDEO).parent, CPU).net


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(shared_file(IMAGES / "0030.jpg")).convert("RGB"))[40:160, 30:170]


def test_real_weights_match_a_plain_forward(animevideo: nn.Module, photo: np.ndarray) -> None:
    expected = plain_forward(animevideo, photo)
    untiled = _run(animevideo, photo, tile=(0, 0))
    assert _max_diff(untiled, expected) <= 1
    # 17 3x3 convs see 17 pixels each way: 20 pixels of context make feathered tiles exact up to float noise.
    tiled = _run(animevideo, photo, tile=(48, 40), tile_pad=20, feather=10)
    assert _max_diff(tiled, expected) <= 1 and _max_diff(tiled, untiled) <= 1


def test_feathering_hides_seams_that_hard_crops_show(animevideo: nn.Module, photo: np.ndarray) -> None:
    # With too little context (tile_pad 4) tiles disagree; a seam is where that error jumps from one column
    # to the next. Hard crops jump at the tile edge; the cross-fade spreads the change over 32 columns
    # (what remains is the roughness of each tile's own error near its window edge).
    expected = plain_forward(animevideo, photo).astype(int)
    edges = [x * 4 for x in (32, 64, 96, 128)]

    def jump(out: np.ndarray) -> float:
        error = out.astype(int) - expected
        return float(np.mean([np.abs(error[:, x] - error[:, x - 1]).mean() for x in edges]))

    hard = jump(_run(animevideo, photo, tile=(32, 32), tile_pad=4, feather=0))
    soft = jump(_run(animevideo, photo, tile=(32, 32), tile_pad=4, feather=4))
    assert hard > 1 and soft < 0.7 * hard


def test_batches_equal_single_tiles_and_report_progress() -> None:
    net, pixels = small_compact(), _noise(40, 70)
    seen: list[float] = []
    one = run_image(
        TileRunner(CPU), pixels, Network(net, 4), TileSettings(tile=(32, 32), tile_pad=8, batch=1), seen.append
    )
    assert seen == [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0]
    runner = TileRunner(CPU)
    seen.clear()
    four = run_image(runner, pixels, Network(net, 4), TileSettings(tile=(32, 32), tile_pad=8, batch=4), seen.append)
    assert _max_diff(one, four) <= 1 and seen == [4 / 6, 1.0]
    assert (runner.stats.tiles, runner.stats.batches, runner.stats.images) == (6, 2, 1)


def test_progress_exception_aborts_the_run() -> None:
    calls: list[float] = []

    def abort(fraction: float) -> None:
        calls.append(fraction)
        raise RuntimeError("task revoked")

    with pytest.raises(RuntimeError, match="task revoked"):
        run_image(TileRunner(CPU), _noise(64, 64), Network(small_compact(), 4), TileSettings(tile=(32, 32)), abort)
    assert calls == [0.25]


@pytest.mark.parametrize("tile", [0, 13])
def test_scale2_rrdb_handles_odd_sizes_pre_pad_and_odd_tiles(tile: int) -> None:
    # Odd sizes need the mod-pad; an odd tile must still give pixel_unshuffle even pieces at even offsets.
    net = small_rrdb(scale=2)
    out = _run(net, _noise(37, 45), 2, tile=(tile, tile), tile_pad=5, pre_pad=3)
    assert out.shape == (74, 90, 3)
    whole = _run(net, _noise(37, 45), 2, tile=(0, 0), pre_pad=3)
    assert _max_diff(out[:, :60], whole[:, :60]) <= 40  # random nets see far; same grid, no odd offsets


def test_pre_pad_crops_back_and_survives_tiny_images() -> None:
    net = small_compact()
    assert _run(net, _noise(5, 3), pre_pad=10).shape == (20, 12, 3)
    assert _run(net, _noise(20, 24), pre_pad=10, tile=(16, 16)).shape == (80, 96, 3)
    assert _run(net, _noise(1, 1), tile=(32, 32)).shape == (4, 4, 3)


def test_sixteen_bit_stays_sixteen_bit() -> None:
    net = small_compact()
    low = (_noise(24, 30).astype(np.uint16) * 257)[:, :, :3]
    high = low + 100  # differs below what 8 bits can tell
    out_low, out_high = _run(net, low, tile=(16, 16)), _run(net, high, tile=(16, 16))
    assert out_low.dtype == np.uint16 and out_low.shape == (96, 120, 3)
    assert np.abs(out_high.astype(int) - out_low.astype(int)).mean() > 20
    with torch.inference_mode():
        expected = net(torch.from_numpy(low.astype(np.float32) / 65535).permute(2, 0, 1)[None])[0]
    expected = np.round(expected.clamp(0, 1).permute(1, 2, 0).numpy() * 65535)
    assert np.abs(_run(net, low, tile=(0, 0)) - expected).max() <= 2


class FakeHalfNaN(nn.Module):
    """Runs like fp16 would (bfloat16 on the CPU) and returns NaN for tiles holding a pixel brighter than 0.99."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        assert x.dtype == torch.bfloat16
        y = self.net(x.float()).to(torch.bfloat16)
        broken = (x.float() > 0.99).flatten(1).any(1)
        y[broken] = float("nan")
        return y


def test_fp16_nan_tiles_are_redone_in_fp32_and_counted() -> None:
    net = small_compact()
    pixels = np.full((64, 64, 3), 100, np.uint8)
    pixels[5, 5] = 255  # only the top-left tile's window holds it
    runner = TileRunner(CPU)
    half = Network(FakeHalfNaN(net), 4, torch.bfloat16, fp32=lambda: net)
    out = run_image(runner, pixels, half, TileSettings(tile=(32, 32), tile_pad=4, batch=2))
    assert runner.stats.fp16_fallbacks == 1 and not np.isnan(out).any()
    assert _max_diff(out, _run(net, pixels, tile=(32, 32), tile_pad=4)) <= 2  # bfloat16 elsewhere


class OutOfMemoryAbove(nn.Module):
    """Raises like CUDA's caching allocator for inputs with more than `limit` pixels (batch included)."""

    def __init__(self, net: nn.Module, limit: int) -> None:
        super().__init__()
        self.net, self.limit, self.refused = net, limit, 0

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] * x.shape[2] * x.shape[3] > self.limit:
            self.refused += 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def test_out_of_memory_halves_the_batch_then_splits_tiles_into_quarters(
    animevideo: nn.Module, photo: np.ndarray
) -> None:
    expected = plain_forward(animevideo, photo)
    guarded = OutOfMemoryAbove(animevideo, limit=70 * 70)
    runner = TileRunner(CPU)
    out = run_image(runner, photo, Network(guarded, 4), TileSettings(tile=(64, 64), tile_pad=20, feather=8, batch=4))
    assert runner.stats.oom_batch_halvings == 2 and runner.stats.oom_splits >= 1
    assert guarded.refused >= 3
    assert _max_diff(out, expected) <= 1  # quarters read their own context: still exact


def test_out_of_memory_that_cannot_be_split_is_raised() -> None:
    with pytest.raises(RuntimeError, match="out of memory"):
        _run(OutOfMemoryAbove(small_compact(), limit=4), _noise(20, 20), tile=(16, 16))


def test_out_of_memory_detection() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_output_is_never_materialised_in_float() -> None:
    # 2000 x 1500 at x4: the uint8 output is 137 MiB, a float32 copy of it 549 MiB. Peak RSS growth must stay
    # well under the latter: tiles are quantised on the device and pasted into the uint8 canvas.
    script = textwrap.dedent(
        """
        import numpy as np, torch
        from services.upscaler import arch
        from services.upscaler.batcher import run_image
        from services.upscaler.inference import TileSettings, Network, TileRunner
        torch.set_num_threads(2)
        torch.manual_seed(0)
        net = arch.SRVGGNetCompact(num_feat=4, num_conv=1, upscale=4).eval()
        pixels = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
        runner = TileRunner(torch.device("cpu"))
        run_image(runner, pixels[:64, :64], Network(net, 4), TileSettings(tile=(32, 32)))  # warm up oneDNN
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        def hwm():
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
        before = rss()
        out = run_image(runner, pixels, Network(net, 4), TileSettings(tile=(128, 128), tile_pad=10, feather=5))
        print((hwm() - before) >> 20, out.nbytes >> 20)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    if "clear_refs" in result.stderr:
        pytest.skip(reason="this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    assert result.returncode == 0, result.stderr
    growth_mib, output_mib = map(int, result.stdout.split())
    assert output_mib == 137
    assert growth_mib < 137 + 200, f"peak RSS grew {growth_mib} MiB"


def test_the_cuda_pipeline_bookkeeping_with_fake_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch (pinned double buffers, two copy streams, padded last batch) run on the CPU with no-op
    streams and events: the same pixels as the plain path. Real overlap is measured by bench/gpu_check.sh."""
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: empty(*a, **k))
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None, raising=False)
    net = small_compact()
    for pixels in (_noise(70, 90, 4), _noise(70, 90, 3).astype(np.uint16) * 257):
        expected = _run(net, pixels, tile=(16, 24), tile_pad=4, batch=3)
        runner = TileRunner(CPU)
        runner._cuda, runner._streams = True, (FakeStream(), FakeStream())  # type: ignore[assignment]
        out = run_image(runner, pixels, Network(net, 4), TileSettings(tile=(16, 24), tile_pad=4, batch=3))
        np.testing.assert_array_equal(out, expected)
        assert runner._submitted == 7 and len(runner._pinned) == 6  # 20 tiles in 7 batches of 3; 2 slots x 3

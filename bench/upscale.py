"""Upscaler engine speed and memory against a naive RealESRGANer-style loop, measured in the same run.

    python bench/upscale.py                    # CPU: real images at small sizes (about 2 minutes on 2 cores)
    python bench/upscale.py --device cuda      # GPU table, RealESRGAN_x4plus frames/s at 1080p (bench/gpu_check.sh)
    python bench/upscale.py --rss-check        # CPU: peak RSS of a 4000 x 3000 input beyond the loaded model

Naive = what RealESRGANer.tile_process does: the whole image goes to the device as float32, tiles run one at
a time in fp32 and are hard-cropped into a full-size float32 output on the device. Optimised = the engine:
`services.upscaler.inference.TileRunner` (driven by `batcher.run_image`) with automatic tile and batch
(`memory.choose`), fp16 and channels_last on CUDA. Throughput is input megapixels per second; peak memory is
torch's peak allocation on CUDA and the peak resident set growth (VmHWM after resetting it) on the CPU.
Weights: realesr-animevideov3 from ../shared/models when present, else a random SRVGGNetCompact of the same
shape (same cost); x4plus is a random RRDBNet of RealESRGAN_x4plus's shape. Only torch, numpy, Pillow and
scikit-image are needed.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/upscale.py`: make services/ importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from services.upscaler import arch, memory  # noqa: E402
from services.upscaler.batcher import run_image  # noqa: E402
from services.upscaler.inference import Network, TileRunner, TileSettings  # noqa: E402

SHARED = ROOT.parent / "shared"
ANIMEVIDEO = SHARED / "models" / "realesr-animevideov3.pth"
NAIVE_TILE, TILE_PAD = 256, 10


def animevideo_net() -> tuple[nn.Module, str]:
    if ANIMEVIDEO.is_file():
        state = torch.load(ANIMEVIDEO, map_location="cpu", weights_only=True)
        return arch.from_state_dict(state.get("params", state)), "realesr-animevideov3"
    torch.manual_seed(0)
    random_net = arch.SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4).eval()
    return random_net, "random SRVGGNetCompact (animevideov3 shape)"


def x4plus_net() -> nn.Module:
    torch.manual_seed(0)
    return arch.RRDBNet(3, 3, num_feat=64, num_block=23, num_grow_ch=32, scale=4).eval()


def test_images(sizes: list[tuple[int, int]]) -> list[tuple[str, np.ndarray]]:
    """Real photos (scikit-image's, and ../shared/images when present) resized to each (width, height)."""
    sources = [("astronaut", skimage.data.astronaut()), ("coffee", skimage.data.coffee())]
    sources.append(("hubble", skimage.data.hubble_deep_field()))
    if (SHARED / "images" / "OST_009.png").is_file():
        sources.append(("OST_009", np.asarray(Image.open(SHARED / "images" / "OST_009.png").convert("RGB"))))
    out = []
    for i, size in enumerate(sizes):
        name, pixels = sources[i % len(sources)]
        resized = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS)
        out.append((f"{name} {size[0]}x{size[1]}", np.asarray(resized)))
    return out


@torch.inference_mode()
def naive(net: nn.Module, rgb: np.ndarray, device: torch.device, tile: int = NAIVE_TILE) -> np.ndarray:
    """RealESRGANer's pre_process + tile_process + post_process, fp32, one tile at a time."""
    img = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None].to(device)
    scale = 4
    _, _, height, width = img.shape
    output = img.new_zeros((1, 3, height * scale, width * scale))
    for y in range(math.ceil(height / tile)):
        for x in range(math.ceil(width / tile)):
            x0, y0 = x * tile, y * tile
            x1, y1 = min(x0 + tile, width), min(y0 + tile, height)
            px0, py0 = max(x0 - TILE_PAD, 0), max(y0 - TILE_PAD, 0)
            px1, py1 = min(x1 + TILE_PAD, width), min(y1 + TILE_PAD, height)
            out = net(img[:, :, py0:py1, px0:px1])
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            output[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = out[
                :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
    return (output[0].clamp_(0, 1) * 255).round_().byte().permute(1, 2, 0).cpu().numpy()


class Optimised:
    """The engine's configuration for `device`: auto tiles and batches, fp16 + channels_last on CUDA."""

    def __init__(self, net: nn.Module, device: torch.device, half: bool, compile: bool = False) -> None:
        cuda = device.type == "cuda"
        self.dtype = torch.float16 if half and cuda else torch.float32
        fp32 = copy.deepcopy(net).to(device)
        self.net = copy.deepcopy(net).to(device=device, dtype=self.dtype)
        if cuda:
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.run_net: nn.Module = torch.compile(self.net) if compile else self.net  # type: ignore[assignment]
        self.network = Network(self.run_net, 4, self.dtype, lambda: fp32)
        self.runner = TileRunner(device, channels_last=cuda)
        self.device = device

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        sizing = memory.choose(self.net, self.device, self.dtype, rgb.shape[:2], tile=None, tile_pad=TILE_PAD)
        job = TileSettings(tile=sizing.tile, tile_pad=TILE_PAD, feather=TILE_PAD // 2, batch=sizing.batch)
        return run_image(self.runner, rgb, self.network, job)


class GpuUtilisation:
    """nvidia-smi sampled every 100 ms in the background; mean utilisation between two instants."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        try:
            self.proc: subprocess.Popen[str] | None = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self.proc = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.samples.append((time.monotonic(), float(line.split(",")[0])))
            except ValueError:
                pass

    def mean(self, start: float, end: float) -> float | None:
        values = [u for t, u in self.samples if start <= t <= end]
        return sum(values) / len(values) if values else None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def measure(fn: Callable[[], np.ndarray], device: torch.device, repeats: int) -> tuple[float, int, np.ndarray]:
    """(seconds per run, peak memory growth in bytes, last output); one warm-up run first."""
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _reset_peak()
        base = _rss()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else _peak_rss() - base
    return seconds, peak, out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def throughput(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    net, label = animevideo_net()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; model: {label}")  # fmt: skip
    print(f"naive: RealESRGANer loop, tile {NAIVE_TILE}, fp32, whole image on the device; optimised: auto tile/batch, "
          f"{'fp16 + channels_last' if device.type == 'cuda' and not args.fp32 else 'fp32'}")  # fmt: skip
    naive_net = copy.deepcopy(net).to(device)
    optimised = Optimised(net, device, half=not args.fp32, compile=args.compile)
    gpu = GpuUtilisation() if device.type == "cuda" else None
    header = f"{'image':24} {'MP':>6} {'naive MP/s':>10} {'opt MP/s':>9} {'ratio':>6}"
    header += f" {'naive peak':>11} {'opt peak':>9}"
    print(header + (f" {'naive GPU%':>10} {'opt GPU%':>8}" if gpu else "") + f" {'PSNR':>6}")
    totals = [0.0, 0.0, 0.0]
    for name, rgb in test_images(sizes):  # type: ignore[arg-type]
        mp = rgb.shape[0] * rgb.shape[1] / 1e6
        t0 = time.monotonic()
        naive_s, naive_peak, naive_out = measure(lambda rgb=rgb: naive(naive_net, rgb, device), device, args.repeats)
        t1 = time.monotonic()
        opt_s, opt_peak, opt_out = measure(lambda rgb=rgb: optimised(rgb), device, args.repeats)
        t2 = time.monotonic()
        totals = [totals[0] + mp, totals[1] + naive_s, totals[2] + opt_s]
        row = f"{name:24} {mp:6.2f} {mp / naive_s:10.3f} {mp / opt_s:9.3f} {naive_s / opt_s:5.2f}x"
        row += f" {naive_peak / 2**20:8.0f} MiB {opt_peak / 2**20:5.0f} MiB"
        if gpu is not None:
            row += f" {gpu.mean(t0, t1) or 0:10.0f} {gpu.mean(t1, t2) or 0:8.0f}"
        print(row + f" {_psnr(naive_out, opt_out):6.1f}", flush=True)
    print(f"{'all':24} {totals[0]:6.2f} {totals[0] / totals[1]:10.3f} {totals[0] / totals[2]:9.3f} "
          f"{totals[1] / totals[2]:5.2f}x")  # fmt: skip
    if args.x4plus:
        x4plus_fps(device, args, gpu)
    if gpu is not None:
        gpu.close()


def x4plus_fps(device: torch.device, args: argparse.Namespace, gpu: GpuUtilisation | None) -> None:
    net = x4plus_net()
    width, height = (int(v) for v in args.frame.split("x"))
    frame = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.LANCZOS))
    optimised = Optimised(net, device, half=not args.fp32, compile=args.compile)
    t0 = time.monotonic()
    opt_s, opt_peak, _ = measure(lambda: optimised(frame), device, args.frames)
    t1 = time.monotonic()
    util = f", GPU {gpu.mean(t0, t1) or 0:.0f}%" if gpu else ""
    print(f"RealESRGAN_x4plus (random weights) {args.frame}: optimised {1 / opt_s:.3f} frames/s, peak "
          f"{opt_peak / 2**20:.0f} MiB{util}", flush=True)  # fmt: skip
    if args.x4plus_naive:
        naive_net = copy.deepcopy(net).to(device)
        naive_s, naive_peak, _ = measure(lambda: naive(naive_net, frame, device), device, 1)
        print(f"RealESRGAN_x4plus naive {1 / naive_s:.3f} frames/s, peak {naive_peak / 2**20:.0f} MiB; "
              f"ratio {naive_s / opt_s:.2f}x")  # fmt: skip


def rss_check(args: argparse.Namespace) -> None:
    """Peak RSS growth of one 4000 x 3000 upscale through the whole engine (Upscaler.upscale_picture)."""
    from services.upscaler.engine import Upscaler
    from services.upscaler.picture import Picture
    from shared.messages import Category, UpscaleOptions

    torch.manual_seed(0)
    net = arch.SRVGGNetCompact(num_feat=16, num_conv=4, upscale=4).eval()  # small and fast: memory is the point
    with tempfile.TemporaryDirectory() as model_dir:
        torch.save({"params": net.state_dict()}, Path(model_dir) / "realesr-animevideov3.pth")
        engine = Upscaler(Path(model_dir), device="cpu", default_tile=None)
        warm = Picture(np.zeros((64, 64, 3), np.uint8))
        engine.upscale_picture(warm, Category.PHOTO, UpscaleOptions(model="realesr-animevideov3"))
        peak, stop = [0], threading.Event()

        def sample() -> None:
            while not stop.wait(0.01):
                peak[0] = max(peak[0], _rss())

        _reset_peak()
        before = _rss()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        width, height = 4000, 3000
        photo = Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.LANCZOS)
        picture = Picture(np.asarray(photo))
        start = time.perf_counter()
        result = engine.upscale_picture(picture, Category.PHOTO, UpscaleOptions(model="realesr-animevideov3"))
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        grown = max(_peak_rss(), peak[0]) - before
    size = f"{width}x{height} -> {result.width}x{result.height}"
    print(f"rss-check: {size} in {seconds:.1f} s; tiles {engine.stats.tiles}")
    print(f"  RSS with the model loaded {before / 2**20:.0f} MiB; peak growth {grown / 2**20:.0f} MiB "
          f"(input {picture.pixels.nbytes / 2**20:.0f} MiB, output {result.picture.pixels.nbytes / 2**20:.0f} MiB); "
          f"limit 2048 MiB: {'OK' if grown <= 2 << 30 else 'OVER'}")  # fmt: skip
    if grown > 2 << 30:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--sizes", help="comma-separated WxH (default: small on CPU, up to 4000x3000 on CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per image (after one warm-up)")
    parser.add_argument("--fp32", action="store_true", help="optimised path in fp32 on CUDA too")
    parser.add_argument("--compile", action="store_true", help="torch.compile the optimised nets")
    parser.add_argument("--x4plus", action="store_true", help="RealESRGAN_x4plus frames/s at 1080p (default on CUDA)")
    parser.add_argument("--x4plus-naive", action="store_true", help="also the naive loop for x4plus (slow)")
    parser.add_argument("--frames", type=int, default=3, help="timed frames for x4plus")
    parser.add_argument("--frame", default="1920x1080", help="x4plus frame size WxH")
    parser.add_argument("--rss-check", action="store_true", help="CPU peak RSS of a 4000x3000 input, then exit")
    args = parser.parse_args()
    if args.rss_check:
        rss_check(args)
        return
    cuda = args.device.startswith("cuda")
    args.sizes = args.sizes or ("640x480,1280x720,1920x1080,4000x3000" if cuda else "256x192,512x384,800x600")
    args.repeats = args.repeats or (3 if cuda else 2)
    args.x4plus = args.x4plus or cuda
    throughput(args)


if __name__ == "__main__":
    main()

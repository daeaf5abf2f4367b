"""Tiles of several waiting tasks in one batch: N small images one after another vs N callers at once.

    python bench/batching.py                   # CPU: 8 images of 128x128 (batch forced to 8; the CPU default is 1)
    python bench/batching.py --device cuda     # 32 images of 256x256, automatic batch (bench/gpu_check.sh)

"one by one" is the engine as it ran before cross-task batching: each image alone, its batch holding only its
own tiles (a 256x256 image is one tile, so every forward carries one tile). "shared" submits the same images
from N threads to one `TileBatcher`, which fills each forward with tiles of several images. Both run the
same net, dtype and tile size in the same process; the ratio is shared / one by one.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.upscale import animevideo_net, test_images  # noqa: E402
from services.upscaler import memory  # noqa: E402
from services.upscaler.batcher import TileBatcher, run_image  # noqa: E402
from services.upscaler.inference import Network, TileRunner, TileSettings  # noqa: E402

TILE_PAD = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--size", default=None, help="WxH of every image")
    parser.add_argument("--batch", type=int, default=None, help="tiles per forward (default: automatic)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    count = args.images or (32 if cuda else 8)
    width, height = (int(v) for v in (args.size or ("256x256" if cuda else "128x128")).split("x"))

    net, label = animevideo_net()
    dtype = torch.float16 if cuda else torch.float32
    net = net.to(device=device, dtype=dtype)
    if cuda:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    network = Network(net, 4, dtype)
    images = [rgb for _, rgb in test_images([(width, height)] * count)]
    images = [np.ascontiguousarray(np.roll(rgb, i * 7, axis=1)) for i, rgb in enumerate(images)]  # all different
    sizing = memory.choose(net, device, dtype, (height, width), tile=None, tile_pad=TILE_PAD, batch=args.batch)
    batch = args.batch or (sizing.batch if cuda else 8)
    job = TileSettings(tile=sizing.tile, tile_pad=TILE_PAD, feather=TILE_PAD // 2, batch=batch)
    runner = TileRunner(device, channels_last=cuda)
    batcher = TileBatcher(TileRunner(device, channels_last=cuda))

    def one_by_one() -> None:
        for rgb in images:
            run_image(runner, rgb, network, job)

    def shared(pool: ThreadPoolExecutor) -> None:
        list(pool.map(lambda rgb: batcher.run(rgb, network, job), images))

    megapixels = count * width * height / 1e6
    print(f"device {device}, model {label}, {count} images of {width}x{height}, tile {job.tile}, batch {batch}")
    with ThreadPoolExecutor(count) as pool:
        timings = {"one by one": 0.0, "shared": 0.0}
        one_by_one(), shared(pool)  # warm-up (cuDNN autotuning for each batch shape)
        for _ in range(args.repeats):
            for name, run in (("one by one", one_by_one), ("shared", lambda: shared(pool))):
                if cuda:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                run()
                if cuda:
                    torch.cuda.synchronize(device)
                timings[name] += time.perf_counter() - start
    base = megapixels * args.repeats / timings["one by one"]
    together = megapixels * args.repeats / timings["shared"]
    stats = batcher.runner.stats
    print(f"{'mode':12} {'MP/s':>8} {'images/s':>9} {'forwards':>9}")
    print(f"{'one by one':12} {base:8.3f} {base / (width * height / 1e6):9.2f} {runner.stats.batches:9d}")
    print(f"{'shared':12} {together:8.3f} {together / (width * height / 1e6):9.2f} {stats.batches:9d}")
    print(f"ratio shared / one by one: {together / base:.2f}x; shared batches {stats.shared_batches}")


if __name__ == "__main__":
    main()

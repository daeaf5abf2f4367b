"""Can the upscaler's CPU side keep a GPU fed? Output megapixels a second per core, the network made instant.

    python bench/upscale_cpu.py                    # 1 and 2 cores: 1080p PNG and JPEG inputs, x4 PNG outputs
    python bench/upscale_cpu.py --cores 1,2,4 --tasks 16 --encoder pillow   # the same with Pillow's PNG encoder
    python bench/upscale_cpu.py --encoders         # PNG encoders on 7680x4320 RGB and RGBA (optional ones if
                                                   # importable: pip install --target DIR fpng imagecodecs ...)

On a GPU the device converts tiles to float, runs the network and quantises; the host decodes the input,
stages tiles, pastes their outputs into the image and encodes it. This bench keeps all of the host's part as
the worker runs it (`open_image` check, `codec.decode`, `Upscaler.upscale_picture` from several handler
threads, `codec.encode` on a pool of one thread per core) and replaces the device's part by a stand-in: the
engine's `runner_class` seam gets `StandInRunner` (bench only), whose forward is a bicubic uint8 resize of
the tile (torch, one thread). Its output looks like a photo to the encoder, where a nearest-neighbour
stand-in would compress unrealistically well; its CPU time is counted apart and left out of "host CPU".

Each core count runs in a child process pinned to that many cores (sched_setaffinity, as taskset), with
TM_CONCURRENCY-like handler threads and `--tasks` tasks after two warm-up ones, once the machine is idle
(`--quiet-wait`: wall-clock scaling means nothing while other processes take the cores). Reported per run:
- out MP/s: output megapixels per wall-clock second, and per core (divided by the cores given);
- MP/host-CPU-s: output megapixels per CPU second of everything but the stand-in: the per-core rate a
  host sustains when its cores are busy with this work alone (wall-clock numbers also pay for whatever
  else runs on the machine, and for the stand-in);
- cores busy: CPU seconds of the whole process per wall second (how many cores the work spread over);
- where the host CPU went, by thread: handler threads (decode, paste), pool (PNG bands), device thread
  (besides the stand-in: staging tiles, copying outputs out of the batch).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/upscale_cpu.py`: make services/ importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import skimage  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402

from services.upscaler import arch, codec, png  # noqa: E402
from services.upscaler.engine import Upscaler  # noqa: E402
from services.upscaler.inference import Network, TileRunner, TileSettings  # noqa: E402
from services.upscaler.picture import Picture  # noqa: E402
from shared.contracts import catalog  # noqa: E402
from shared.images import encode_image, open_image  # noqa: E402
from shared.messages import Category, UpscaleOptions  # noqa: E402

MODEL = "realesr-animevideov3"  # any x4 model: its weights are a small random net, the stand-in ignores it
PHOTOS = ["astronaut.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "hubble_deep_field.jpg", "chelsea.png"]


def photo_1080p() -> Image.Image:
    """1920 x 1080 of real photos (scikit-image's), six 640 x 540 cells at about their own resolution."""
    canvas = Image.new("RGB", (1920, 1080))
    data = Path(skimage.__file__).parent / "data"
    for i, name in enumerate(PHOTOS):
        image = Image.open(data / name).convert("RGB")
        scale = max(640 / image.width, 540 / image.height)
        size = (max(640, round(image.width * scale)), max(540, round(image.height * scale)))
        cell = image.resize(size, Image.Resampling.LANCZOS).crop((0, 0, 640, 540))
        canvas.paste(cell, ((i % 3) * 640, (i // 3) * 540))
    return canvas


class StandInRunner(TileRunner):
    """Bench only: a device whose network takes no time (bicubic uint8 x scale); counts its own CPU time."""

    standin_s = 0.0
    device_thread: int | None = None

    def forward(
        self, raw: Tensor, network: Network, job: TileSettings, max_value: int, fp32: bool, opaque: bool = False
    ) -> tuple[Tensor, Tensor]:
        began = time.thread_time()
        StandInRunner.device_thread = threading.get_ident()
        resized = F.interpolate(raw.permute(0, 3, 1, 2), scale_factor=network.scale, mode="bicubic")
        output = resized.permute(0, 2, 3, 1).contiguous()  # channels_last in, so this is a view
        StandInRunner.standin_s += time.thread_time() - began
        return output, torch.zeros(raw.shape[0], dtype=torch.bool)


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of every live thread, summed by role (its name up to the first '_')."""
    spent: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            seconds = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except OSError:
            continue
        role = "device" if thread.ident == StandInRunner.device_thread else thread.name.split("_")[0]
        spent[role] = spent.get(role, 0.0) + seconds
    return spent


def child(args: argparse.Namespace) -> dict[str, object]:
    """One run pinned to `args.cores` cores; returns what it measured."""
    allowed = sorted(os.sched_getaffinity(0))
    if args.cores > len(allowed):
        raise SystemExit(f"{args.cores} cores asked, {len(allowed)} available")
    os.sched_setaffinity(0, allowed[: args.cores])
    torch.set_num_threads(1)  # the stand-in's resize: one thread, like a device's single driver

    photo = photo_1080p()
    buffer = io.BytesIO()
    if args.input == "png":
        photo.save(buffer, "PNG", compress_level=6)
    else:
        photo.save(buffer, "JPEG", quality=92)
    data = buffer.getvalue()

    model_dir = Path(tempfile.mkdtemp(prefix="upscale-cpu-"))
    torch.manual_seed(0)
    net = arch.SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4)
    torch.save({"params": net.state_dict()}, model_dir / catalog.get(MODEL).filename)
    engine = Upscaler(model_dir, device="cpu", default_tile=args.tile, batch=args.batch, runner_class=StandInRunner)
    options = UpscaleOptions(model=MODEL, tile_pad=10)
    pool = ThreadPoolExecutor(args.cores, thread_name_prefix="pool")
    encode: Callable[[Picture], bytes]
    if args.encoder == "pillow":
        encode = lambda picture: encode_image(picture.to_pil(), "png")  # noqa: E731 - before: compress_level 3
    else:
        encode = lambda picture: codec.encode(picture, "png", pool=pool)  # noqa: E731

    def task(_index: int) -> int:  # what the worker's handler thread does with one message
        open_image(data, load=False, max_pixels=40_000_000)
        picture = codec.decode(data)
        result = engine.upscale_picture(picture, Category.PHOTO, options)
        return len(encode(result.picture))

    with ThreadPoolExecutor(args.concurrency, thread_name_prefix="handler") as handlers:
        sizes = list(handlers.map(task, range(2)))  # warm up: first touches of memory, torch's kernels
        cpu0, threads0, standin0 = time.process_time(), thread_cpu_s(), StandInRunner.standin_s
        began = time.perf_counter()
        sizes = list(handlers.map(task, range(args.tasks)))
        wall = time.perf_counter() - began
        cpu, threads, standin = time.process_time() - cpu0, thread_cpu_s(), StandInRunner.standin_s - standin0
    pool.shutdown()
    by_thread = {role: threads[role] - threads0.get(role, 0.0) for role in threads}
    by_thread["device"] = by_thread.get("device", 0.0) - standin  # the device thread's host work only
    out_mp = args.tasks * photo.width * photo.height * 16 / 1e6
    return {
        "cores": args.cores,
        "input": args.input,
        "input_bytes": len(data),
        "encoder": args.encoder,
        "tasks": args.tasks,
        "output_bytes": int(np.mean(sizes)),
        "wall_s": wall,
        "out_mp": out_mp,
        "cpu_s": cpu,
        "standin_s": standin,
        "by_thread_s": by_thread,
    }


def wait_quiet(max_s: float) -> float:
    """Wait up to `max_s` for the machine's CPUs to be (nearly) idle; returns their busy share when it went on."""
    deadline = time.monotonic() + max_s
    while True:
        before = _cpu_times()
        time.sleep(1.0)
        after = _cpu_times()
        busy = 1 - (after[0] - before[0]) / max(1, after[1] - before[1])
        if busy < 0.05 or time.monotonic() > deadline:
            return busy


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def report(runs: list[dict]) -> None:
    head = (
        "| cores | input | encoder | tasks | wall s | out MP/s | out MP/s per core | host CPU s/task | MP/host-CPU-s "
        "| stand-in s/task | cores busy | host CPU by thread, s/task | machine busy before |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for run in runs:
        tasks = run["tasks"]
        host = run["cpu_s"] - run["standin_s"]
        shares = sorted(run["by_thread_s"].items())
        threads = ", ".join(f"{role} {seconds / tasks:.3f}" for role, seconds in shares if seconds > 0.0005)
        rate = run["out_mp"] / run["wall_s"]
        print(
            f"| {run['cores']} | {run['input']} | {run['encoder']} | {tasks} | {run['wall_s']:.1f} | {rate:.0f} "
            f"| {rate / run['cores']:.0f} | {host / tasks:.3f} | {run['out_mp'] / host:.0f} "
            f"| {run['standin_s'] / tasks:.3f} | {run['cpu_s'] / run['wall_s']:.2f} | {threads} "
            f"| {run['busy_before']:.0%} |"
        )


def encoders(args: argparse.Namespace) -> None:
    """The PNG encoders on one 7680 x 4320 x4 output, RGB and RGBA: CPU per megapixel, wall, size, exactness."""
    photo = photo_1080p().resize((7680, 4320), Image.Resampling.LANCZOS)  # about as smooth as a x4 output
    rgb = np.asarray(photo)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    alpha = np.clip((1.1 - np.hypot(yy / (h / 2) - 1, xx / (w / 2) - 1)) * 400, 0, 255).astype(np.uint8)
    rgba = np.dstack([rgb, alpha])
    pool = ThreadPoolExecutor(args.threads, thread_name_prefix="pool")
    print(f"| image | encoder | MP/s per core (CPU) | wall s ({args.threads} threads for 'bands') | MB | vs Pillow 3 |")
    print("|---|---|---|---|---|---|")
    for name, pixels in (("RGB", rgb), ("RGBA", rgba)):
        base = None
        for label, encode in _candidates(pool):
            wall = cpu = float("inf")
            try:
                for _ in range(args.repeat):  # the best of a few: other processes share the machine
                    cpu0, began = time.process_time(), time.perf_counter()
                    data = encode(pixels)
                    wall, cpu = min(wall, time.perf_counter() - began), min(cpu, time.process_time() - cpu0)
            except Exception as exc:  # an optional encoder that cannot take this mode
                print(f"| {name} | {label} | n/a: {exc} | | | |")
                continue
            back = np.asarray(Image.open(io.BytesIO(data))).reshape(pixels.shape)
            exact = "" if np.array_equal(back, pixels) else " NOT LOSSLESS"
            base = base or len(data)
            mp = h * w / 1e6
            print(
                f"| {name} | {label}{exact} | {mp / cpu:.0f} | {wall:.2f} | {len(data) / 1e6:.1f} "
                f"| {len(data) / base:.2f}x |"
            )


def _candidates(pool: ThreadPoolExecutor) -> list[tuple[str, Callable[[np.ndarray], bytes]]]:
    def pillow(level: int) -> Callable[[np.ndarray], bytes]:
        def encode(pixels: np.ndarray) -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG", compress_level=level)
            return buffer.getvalue()

        return encode

    out: list[tuple[str, Callable[[np.ndarray], bytes]]] = [
        ("Pillow compress_level=3 (before)", pillow(3)),
        ("Pillow compress_level=1", pillow(1)),
        ("png.py: Up + ISA-L 1, one thread", lambda p: png.encode(p)),
        ("png.py: Up + ISA-L 1, bands on the pool", lambda p: png.encode(p, pool=pool)),
    ]
    deflaters: list[tuple[str, Callable[[bytes], bytes]]] = []
    try:
        from zlib_ng import zlib_ng  # type: ignore[import-not-found]

        for level in (1, 2):
            deflaters.append((f"Up + zlib-ng {level}", functools.partial(zlib_ng.compress, level=level)))
    except ImportError:
        pass
    try:
        import deflate  # type: ignore[import-not-found]

        deflaters.append(("Up + libdeflate 1", lambda d: bytes(deflate.zlib_compress(d, 1))))
    except ImportError:
        pass
    for label, deflater in deflaters:
        out.append((f"{label}, one thread", functools.partial(_up_png, deflater=deflater)))
    try:
        import fpng  # type: ignore[import-not-found]

        out.append(("fpng (py-fpng-nb)", lambda p: bytes(fpng.from_ndarray(p))))
    except ImportError:
        pass
    try:
        import imagecodecs  # type: ignore[import-not-found]

        out.append(("imagecodecs png level 1", lambda p: bytes(imagecodecs.png_encode(p, level=1))))
        fast = {"level": 1, "strategy": 3, "filter": 16}  # OpenCV's fast settings: RLE, Sub
        out.append(("imagecodecs png level 1 RLE Sub", lambda p: bytes(imagecodecs.png_encode(p, **fast))))
        out.append(("imagecodecs spng level 1", lambda p: bytes(imagecodecs.spng_encode(p, level=1))))
    except ImportError:
        pass
    return out


def _up_png(pixels: np.ndarray, deflater: Callable[[bytes], bytes]) -> bytes:
    """png.py's file with another deflate: every row Up-filtered, one zlib stream from `deflater`."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0], filtered[0, 0], filtered[0, 1:] = 2, 0, rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, png.COLOUR_TYPES[channels], 0, 0, 0)
    body = [png.SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", deflater(filtered.tobytes()))]
    return b"".join([*body, _chunk(b"IEND", b"")])


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", default="1,2", help="core counts to run, comma-separated")
    parser.add_argument("--inputs", default="png,jpeg", help="input formats, comma-separated")
    parser.add_argument("--tasks", type=int, default=8, help="measured tasks per run (after 2 warm-up ones)")
    parser.add_argument("--concurrency", type=int, default=4, help="handler threads (TM_CONCURRENCY)")
    parser.add_argument("--tile", type=int, default=512, help="tile size (a GPU's automatic size is up to 512)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--encoder", choices=["png", "pillow"], default="png", help="png: services/upscaler/png.py")
    parser.add_argument("--encoders", action="store_true", help="only the PNG encoder table")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="pool size, --encoders")
    parser.add_argument("--repeat", type=int, default=3, help="--encoders: best of this many")
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument("--quiet-wait", type=float, default=120, help="wait up to S s for an idle machine per run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", default="png", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.encoders:
        encoders(args)
        return
    if args.child:
        args.cores = int(args.cores)
        print(json.dumps(child(args)))
        return
    runs = []
    for cores in (int(c) for c in args.cores.split(",")):
        for fmt in args.inputs.split(","):
            busy = wait_quiet(args.quiet_wait)
            command = [sys.executable, __file__, "--child", "--cores", str(cores), "--input", fmt]
            command += ["--tasks", str(args.tasks), "--concurrency", str(args.concurrency), "--tile", str(args.tile)]
            command += ["--batch", str(args.batch), "--encoder", args.encoder]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(done.stderr)
            runs.append(json.loads(done.stdout.splitlines()[-1]) | {"busy_before": busy})
            print(f"cores {cores}, {fmt} input: {runs[-1]['wall_s']:.1f} s", file=sys.stderr)
    report(runs)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()

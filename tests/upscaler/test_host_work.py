"""Host image work (decode, tile pasting, encode) off the device thread, and the same pixels as before it moved."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch

from services.upscaler import codec, inference, picture, png, tiling
from services.upscaler.batcher import TileBatcher, run_image
from services.upscaler.engine import Upscaler
from services.upscaler.inference import Network, TileRunner, TileSettings
from services.upscaler.worker import cpu_threads
from shared.images import encode_image
from shared.messages import Category, UpscaleOptions
from tests.upscaler.conftest import IMAGES, shared_file, small_compact
from tests.upscaler.fakecuda import FakeEvent, FakeStream

CPU = torch.device("cpu")
ANIME = "realesr-animevideov3"
WAIT_S = 120
# Where each kind of work lives, by source file.
MODULES = {
    "inference": inference.__file__,
    "tiling": tiling.__file__,
    "png": png.__file__,
    "codec": codec.__file__,
    "picture": picture.__file__,
    "PIL": str(Path(PIL.__file__).parent),
}


@contextlib.contextmanager
def modules_by_thread() -> Iterator[dict[str, set[str]]]:
    """Record which of MODULES each thread started after entering runs Python code of (thread name -> labels)."""
    seen: dict[str, set[str]] = defaultdict(set)

    def profile(frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        if event == "call":
            filename = frame.f_code.co_filename
            for label, where in MODULES.items():
                if filename.startswith(where):
                    seen[threading.current_thread().name].add(label)

    threading.setprofile(profile)
    try:
        yield seen
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]


def test_decode_paste_and_encode_never_run_on_the_device_thread(install, monkeypatch) -> None:
    monkeypatch.setattr(png, "BAND_BYTES", 1 << 14)  # a small output in several bands, so the pool gets some
    engine = Upscaler(install(ANIME, small_compact()), device="cpu", default_tile=32)
    data = shared_file(IMAGES / "children-alpha.png").read_bytes()

    with modules_by_thread() as seen, ThreadPoolExecutor(2, thread_name_prefix="cpu") as cpu:

        def handle() -> bytes:  # what the worker's handler thread does with a message
            decoded = codec.decode(data)
            small = decoded.with_pixels(decoded.pixels[24:88, 96:192])  # an alpha edge, 12 tiles
            result = engine.upscale_picture(small, Category.ANIME, UpscaleOptions(model=ANIME, tile_pad=10))
            return codec.encode(result.picture, "png", pool=cpu)

        with ThreadPoolExecutor(1, thread_name_prefix="handler") as handlers:
            encoded = handlers.submit(handle).result(WAIT_S)

    threads = seen
    assert codec.decode(encoded).size == (384, 256)
    assert "inference" in threads["tile-batcher"]  # the device thread ran the tiles
    assert threads["tile-batcher"].isdisjoint({"tiling", "png", "codec", "picture", "PIL"})  # and nothing else
    assert {"codec", "PIL", "tiling"} <= threads["handler_0"]  # decoding and pasting: the handler's thread
    assert any("png" in labels for name, labels in threads.items() if name.startswith("cpu_"))  # bands: the pool


@pytest.mark.parametrize("name", ["0030.jpg", "children-alpha.png", "00017_gray.png"])
def test_the_engine_gives_the_pixels_of_the_old_path(install, name: str) -> None:
    net = small_compact()
    engine = Upscaler(install(ANIME, net), device="cpu", default_tile=48)
    source = codec.decode(shared_file(IMAGES / name).read_bytes())
    source = source.with_pixels(source.pixels[:120, :150])

    # Before: one image in one thread, each tile pasted where it was computed; Pillow's PNG encoder.
    job = TileSettings(tile=(48, 48), tile_pad=10, feather=5, batch=1)
    before = run_image(TileRunner(CPU), source.pixels, Network(net, 4), job)
    old = encode_image(source.with_pixels(before).to_pil(), "png")

    # Now: the engine's device thread computes, this thread pastes, the PNG is written in bands on a pool.
    with ThreadPoolExecutor(2) as cpu:
        result = engine.upscale_picture(source, Category.ANIME, UpscaleOptions(model=ANIME, tile_pad=10))
        new = codec.encode(result.picture, "png", pool=cpu)

    np.testing.assert_array_equal(codec.decode(new).pixels, codec.decode(old).pixels)
    assert result.picture.mode == source.mode


def test_outputs_in_reused_pinned_buffers_are_copied_before_the_device_thread_moves_on(monkeypatch) -> None:
    """On CUDA a batch's output lives in a pinned buffer that the next-but-one batch overwrites. With the pasting
    thread slowed down, the device thread runs ahead of it: the pixels must still be right."""
    net, pixels = small_compact(), np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    job = TileSettings(tile=(16, 24), tile_pad=4, batch=2)
    expected = run_image(TileRunner(CPU), pixels, Network(net, 4), job)

    empty, paste = torch.empty, tiling.Canvas.paste
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: empty(*a, **k))
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None, raising=False)

    def slow_paste(self: tiling.Canvas, row: int, col: int, tile: np.ndarray) -> None:
        time.sleep(0.01)
        paste(self, row, col, tile)

    monkeypatch.setattr(tiling.Canvas, "paste", slow_paste)
    runner = TileRunner(CPU)
    runner._cuda, runner._streams = True, (FakeStream(), FakeStream())  # type: ignore[assignment]
    out = TileBatcher(runner).run(pixels, Network(net, 4), job)
    np.testing.assert_array_equal(out, expected)
    assert runner._submitted == 10 and len(runner._pinned) == 6  # 20 tiles, 2 slots of in / out / flags


def test_cpu_threads_default_to_the_usable_cores() -> None:
    assert cpu_threads(3) == 3
    assert cpu_threads() == len(__import__("os").sched_getaffinity(0))

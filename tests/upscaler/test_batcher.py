"""Tiles of several images in one batch (CPU): same pixels as one image at a time, priority, isolation, cancel.

Each test first parks the batcher's driver thread inside a blocker image's progress callback, so that the
images under test are all waiting when it resumes: what then shares a batch is decided, not raced.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from services.upscaler.batcher import BatchLimit, TileBatcher, _padded_size, run_image
from services.upscaler.engine import Upscaler
from services.upscaler.inference import Network, TileRunner, TileSettings
from services.upscaler.plan import Cancelled
from shared.messages import Category, UpscaleOptions
from tests.upscaler.conftest import small_compact

CPU = torch.device("cpu")
WAIT_S = 60
JOB = TileSettings(tile=(32, 32), tile_pad=8, batch=8)  # 64 x 64 images: 4 tiles each, so 2 images fill a batch


def _noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


class CountingNet(nn.Module):
    """The net, recording the batch size of every forward; raises for inputs holding a pure white pixel."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.batch_sizes = net, []

    def forward(self, x: Tensor) -> Tensor:
        self.batch_sizes.append(x.shape[0])
        if bool((x >= 1.0).all(1).any()):
            raise RuntimeError("this net cannot take pure white")
        return self.net(x)


class Parked:
    """Holds the batcher's driver thread in a blocker image's progress callback until `release`."""

    def __init__(self, batcher: TileBatcher, pool: ThreadPoolExecutor, network: Network) -> None:
        self.entered, self._go = threading.Event(), threading.Event()

        def hold(_fraction: float) -> None:
            self.entered.set()
            assert self._go.wait(WAIT_S)

        blocker_job = TileSettings(tile=(0, 0), batch=1)
        self.future = pool.submit(batcher.run, _noise(16, 16, 99), network, blocker_job, hold, priority=10)
        assert self.entered.wait(WAIT_S)

    def release(self) -> None:
        self._go.set()
        self.future.result(WAIT_S)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def _wait_queued(batcher: TileBatcher, count: int) -> None:
    """Wait (bounded) until the batcher holds `count` images, the parked blocker included."""
    for _ in range(WAIT_S * 100):
        if len(batcher._scheduler._snapshot()) >= count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{count} images did not reach the batcher")


def test_tiles_of_several_images_share_batches_and_give_the_same_pixels(pool: ThreadPoolExecutor) -> None:
    net = CountingNet(small_compact())
    network = Network(net, 4)
    images = [_noise(64, 64, seed) for seed in range(3)]
    alone = [run_image(TileRunner(CPU), image, network, JOB) for image in images]
    net.batch_sizes.clear()

    batcher = TileBatcher(TileRunner(CPU))
    parked = Parked(batcher, pool, network)
    futures = [pool.submit(batcher.run, image, network, JOB) for image in images]
    _wait_queued(batcher, 4)
    parked.release()
    outputs = [f.result(WAIT_S) for f in futures]

    for together, single in zip(outputs, alone, strict=True):
        assert np.abs(together.astype(int) - single.astype(int)).max() <= 1
    assert net.batch_sizes[1:] == [8, 4]  # after the blocker: 12 tiles of 3 images in 2 forwards, not 3
    assert batcher.runner.stats.shared_batches == 1 and batcher.runner.stats.images == 4


def test_higher_priority_image_goes_first(pool: ThreadPoolExecutor) -> None:
    network = Network(small_compact(), 4)
    batcher = TileBatcher(TileRunner(CPU))
    finished: list[str] = []
    parked = Parked(batcher, pool, network)

    def run(name: str, tile: int, priority: int) -> None:
        def done(fraction: float) -> None:  # called in the driver thread: the order is the driver's own
            if fraction == 1.0:
                finished.append(name)

        job = TileSettings(tile=(tile, tile), tile_pad=8, batch=8)
        batcher.run(_noise(64, 64, 1), network, job, done, priority=priority)

    # Windows of 48, 32 and 64 pixels: three shapes, so nothing is shared and the order shows.
    futures = [pool.submit(run, "low", 32, 1), pool.submit(run, "mid", 16, 5)]
    _wait_queued(batcher, 3)
    futures.append(pool.submit(run, "high", 0, 9))
    _wait_queued(batcher, 4)
    parked.release()
    for future in futures:
        future.result(WAIT_S)
    assert finished == ["high", "mid", "low"]


def test_an_image_that_breaks_a_shared_batch_fails_alone(pool: ThreadPoolExecutor) -> None:
    net = CountingNet(small_compact())
    network = Network(net, 4)
    good, bad = _noise(64, 64, 1), _noise(64, 64, 2)
    bad[40, 40] = 255  # pure white in one tile: the net raises for any batch holding it
    batcher = TileBatcher(TileRunner(CPU))
    parked = Parked(batcher, pool, network)
    futures: list[Future[np.ndarray]] = [pool.submit(batcher.run, image, network, JOB) for image in (good, bad)]
    _wait_queued(batcher, 3)
    parked.release()

    expected = run_image(TileRunner(CPU), good, Network(small_compact(), 4), JOB)
    assert np.abs(futures[0].result(WAIT_S).astype(int) - expected.astype(int)).max() <= 1
    with pytest.raises(RuntimeError, match="pure white"):
        futures[1].result(WAIT_S)


def test_a_cancelled_waiting_image_is_dropped_without_running(pool: ThreadPoolExecutor) -> None:
    net = CountingNet(small_compact())
    network = Network(net, 4)
    batcher = TileBatcher(TileRunner(CPU))
    parked = Parked(batcher, pool, network)
    cancel = threading.Event()
    future = pool.submit(batcher.run, _noise(64, 64, 3), network, JOB, cancel=cancel)
    _wait_queued(batcher, 2)
    cancel.set()
    with pytest.raises(Cancelled):
        future.result(WAIT_S)  # freed while the driver is still parked
    forwards = len(net.batch_sizes)
    parked.release()
    batcher.run(_noise(16, 16, 4), network, TileSettings(), priority=0)  # the driver goes on serving others
    assert len(net.batch_sizes) == forwards + 1


def test_out_of_memory_in_a_shared_batch_halves_it_and_loses_nothing(pool: ThreadPoolExecutor) -> None:
    class OutOfMemoryAbove4(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Tensor:
            if x.shape[0] > 4:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.net(x)

    base = small_compact()
    network = Network(OutOfMemoryAbove4(base), 4)
    images = [_noise(64, 64, seed) for seed in range(3)]
    batcher = TileBatcher(TileRunner(CPU))
    parked = Parked(batcher, pool, network)
    futures = [pool.submit(batcher.run, image, network, JOB) for image in images]
    _wait_queued(batcher, 4)
    parked.release()
    for future, image in zip(futures, images, strict=True):
        expected = run_image(TileRunner(CPU), image, Network(base, 4), JOB)
        assert np.abs(future.result(WAIT_S).astype(int) - expected.astype(int)).max() <= 1
    assert batcher.runner.stats.oom_batch_halvings == 1


def test_padding_to_a_power_of_two_within_the_cap() -> None:
    assert [_padded_size(n, 7) for n in (1, 2, 3, 5, 7)] == [1, 2, 4, 7, 7]
    assert [_padded_size(n, 16) for n in (1, 3, 9, 16)] == [1, 4, 16, 16]


def test_engine_callers_in_threads_share_batches(install, pool: ThreadPoolExecutor) -> None:
    engine = Upscaler(install("realesr-animevideov3", small_compact()), device="cpu", default_tile=32, batch=8)
    pictures = [Image.fromarray(_noise(64, 64, seed)) for seed in range(4)]
    options = UpscaleOptions(model="realesr-animevideov3", tile_pad=8)
    alone = [np.asarray(engine.upscale(p, Category.ANIME, options).image) for p in pictures]
    assert engine.stats.shared_batches == 0
    parked = Parked(engine._batcher, pool, Network(small_compact(), 4))
    futures = [pool.submit(engine.upscale, p, Category.ANIME, options) for p in pictures]
    _wait_queued(engine._batcher, 5)
    parked.release()
    for single, future in zip(alone, futures, strict=True):
        assert np.abs(single.astype(int) - np.asarray(future.result(WAIT_S).image).astype(int)).max() <= 1
    assert engine.stats.shared_batches == 2  # 16 tiles of 4 tasks in 2 forwards of 8


def test_a_batch_limit_is_raised_again_after_clean_batches_and_waits_longer_each_time() -> None:
    limit = BatchLimit(4, patience=3)
    assert [limit.succeeded(4) for _ in range(3)] == [False, False, True] and limit.size == 8
    assert not limit.succeeded(5)  # part-full at the new size: no evidence either way
    limit.out_of_memory(4)  # the size up still did not fit
    assert limit.size == 4 and limit.patience == 6
    assert [limit.succeeded(4) for _ in range(6)] == [False] * 5 + [True]


def test_a_batch_size_halved_by_a_passing_memory_spike_comes_back(pool: ThreadPoolExecutor) -> None:
    class TightWhileFlagged(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net, self.tight, self.batch_sizes = net, True, []

        def forward(self, x: Tensor) -> Tensor:
            if self.tight and x.shape[0] > 4:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            self.batch_sizes.append(x.shape[0])
            return self.net(x)

    net = TightWhileFlagged(small_compact())
    network = Network(net, 4)
    batcher = TileBatcher(TileRunner(CPU))
    batcher._scheduler.recovery_batches = 2
    for round_ in range(2):
        parked = Parked(batcher, pool, network)
        futures = [pool.submit(batcher.run, _noise(64, 64, seed), network, JOB) for seed in range(3)]
        _wait_queued(batcher, 4)
        net.batch_sizes.clear()
        parked.release()
        for future in futures:
            future.result(WAIT_S)
        if round_ == 0:  # the spike: halved to 4, then two full batches of 4 and the limit is back at 8
            assert net.batch_sizes == [4, 4, 4]
            assert batcher.runner.stats.oom_batch_halvings == 1 and batcher.runner.stats.oom_batch_recoveries == 1
            net.tight = False  # the memory is free again
    assert net.batch_sizes == [8, 4], "the second round runs full batches of 8 again"
    assert batcher.runner.stats.oom_batch_halvings == 1

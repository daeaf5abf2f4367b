"""Batches of tiles across images: one device, several tasks waiting, every forward as full as it can be.

The scheduler picks the waiting image of highest priority (then the earliest) as the lead of the next batch,
takes up to the batch size of its tiles and fills the rest with tiles of other waiting images that have the
same key (network, window shape, pixel type, alpha mode). Small images of one size (thumbnails, video
frames) then share forwards instead of each running a nearly empty batch. One batch stays in flight while
the previous one is pasted, so on CUDA copies and host work overlap the network.

Failures stay with the image they belong to:
- out of memory when submitting: the tiles go back and the batch size for that key is halved; at one tile,
  the lead image continues tile by tile, quartering tiles as memory needs (plan.py). A halving is not for
  ever (the memory may have been taken by something passing): after RECOVERY_BATCHES full batches at the
  lower size the next size up is tried again, and each out-of-memory there doubles the wait before the next try;
- any other error in a batch shared by several images: each of them is retried on its own, unshared, so
  one bad image cannot fail the others; in a batch of one image it fails that image;
- a progress callback that raises, or a set cancel event, ends that image only.

`TileBatcher` owns the device from one thread; callers in any thread block in `run` until their image is done,
pasting its tiles' outputs into the image as they arrive (plan.py): host work stays off the device thread.
`run_image` is the same scheduler driven by the calling thread, for one image alone (tests, benches).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog
import torch

from services.upscaler.inference import Batch, Network, TileRunner, TileSettings, is_out_of_memory
from services.upscaler.plan import ImagePlan, Tile

log = structlog.get_logger()

Entry = tuple[ImagePlan, Tile]
RECOVERY_BATCHES = 50  # full batches at a halved size before the next size up is tried again


@dataclass
class BatchLimit:
    """The batch size a key is held to after running out of memory, and when to try more again."""

    size: int
    patience: int  # full batches at `size` before the next size up is tried
    clean: int = 0  # full batches at `size` since the last change

    def out_of_memory(self, size: int) -> None:
        self.size, self.clean, self.patience = size, 0, self.patience * 2

    def succeeded(self, count: int) -> bool:
        """Count a batch of `count` tiles that ran; True when the limit was raised (doubled)."""
        if count < self.size:
            return False  # a part-full batch says nothing about whether the limit still holds
        self.clean += 1
        if self.clean < self.patience:
            return False
        self.size, self.clean = self.size * 2, 0
        return True


def _padded_size(count: int, cap: int) -> int:
    """Batches are padded to a power of two (at most `cap`): few distinct shapes, little wasted compute."""
    size = 1
    while size < count:
        size *= 2
    return max(count, min(size, cap))


class Scheduler:
    """Forms and runs batches from every image added; `step` does one submit and/or one paste."""

    def __init__(self, runner: TileRunner) -> None:
        self.runner = runner
        self._plans: list[ImagePlan] = []
        self._lock = threading.Lock()  # `add` may come from other threads than `step`
        self._pending: tuple[Batch, list[Entry]] | None = None
        self._limits: dict[object, BatchLimit] = {}  # batch size per key after out-of-memory halvings
        self.recovery_batches = RECOVERY_BATCHES

    def add(self, plan: ImagePlan) -> None:
        with self._lock:
            self._plans.append(plan)

    def busy(self) -> bool:
        """Tiles left to hand out, or a batch in flight."""
        return self._pending is not None or any(p.active and p.remaining() for p in self._snapshot())

    def fail_all(self, error: BaseException) -> None:
        self._pending = None
        for plan in self._snapshot():
            plan.fail(error)
        self._retire()

    def step(self) -> None:
        waiting = sorted((p for p in self._snapshot() if p.active and p.remaining()), key=_order)
        if waiting and waiting[0].split:
            self._paste_pending()
            self._solve_alone(waiting[0])
        elif waiting:
            entries, cap = self._group(waiting)
            try:
                batch = self._submit(entries, cap)
            except Exception as exc:
                self._handle_submit_error(waiting[0], entries, exc)
                return  # the batch in flight is pasted after the retry is submitted
            self._paste_pending()
            self._pending = (batch, entries)
        else:
            self._paste_pending()
        self._retire()

    # -- forming and running batches -------------------------------------------------------------------------

    def _group(self, waiting: list[ImagePlan]) -> tuple[list[Entry], int]:
        """The lead's next tiles, topped up with tiles of other images of the same key; and the batch size."""
        lead = waiting[0]
        limit = self._limits.get(lead.key)
        cap = max(1, min(lead.job.batch, limit.size if limit else lead.job.batch))
        entries: list[Entry] = [(lead, t) for t in lead.take(cap)]
        for other in waiting[1:]:
            if len(entries) >= cap or lead.solo:
                break
            if other.key == lead.key and not other.solo and not other.split:
                entries += [(other, t) for t in other.take(cap - len(entries))]
        return entries, cap

    def _submit(self, entries: list[Entry], cap: int) -> Batch:
        lead = entries[0][0]
        windows = [plan.window(tile) for plan, tile in entries]
        opaque = all(plan.opaque(w) for (plan, _), w in zip(entries, windows, strict=True))
        batch = self.runner.submit(
            windows, lead.network, lead.job, lead.max_value, opaque, _padded_size(len(entries), cap)
        )
        if len({id(plan) for plan, _ in entries}) > 1:
            self.runner.stats.shared_batches += 1
        return batch

    def _handle_submit_error(self, lead: ImagePlan, entries: list[Entry], exc: Exception) -> None:
        plans = _plans_of(entries)
        for plan in plans:
            plan.give_back(sum(1 for p, _ in entries if p is plan))
        if is_out_of_memory(exc):
            self.runner.release()
            if len(entries) > 1:
                size = max(1, len(entries) // 2)
                if (limit := self._limits.get(lead.key)) is None:
                    self._limits[lead.key] = BatchLimit(size, patience=self.recovery_batches)
                else:
                    limit.out_of_memory(size)
                self.runner.stats.oom_batch_halvings += 1
            else:
                lead.split = True
        elif len(plans) > 1:
            log.warning("shared_batch_failed", error=str(exc), images=len(plans))
            for plan in plans:
                plan.solo = True
        else:
            lead.fail(exc)

    def _paste_pending(self) -> None:
        if self._pending is None:
            return
        batch, entries = self._pending
        self._pending = None
        outputs, bad = self.runner.collect(batch)
        for i, (plan, tile) in enumerate(entries):
            if not plan.active:
                continue
            try:
                plan.accept(tile, outputs[i], bool(bad[i]))
            except Exception as exc:
                plan.fail(exc)
        for plan in _plans_of(entries):
            if plan.active:
                plan.report()
        self._count_success(entries)

    def _count_success(self, entries: list[Entry]) -> None:
        lead = entries[0][0]
        limit = self._limits.get(lead.key)
        # Kept once back at the size memory.choose picked: it remembers how patient the next try must be.
        if limit is not None and limit.size < lead.job.batch and limit.succeeded(len(entries)):
            self.runner.stats.oom_batch_recoveries += 1

    def _solve_alone(self, plan: ImagePlan) -> None:
        try:
            plan.solve_next()
        except Exception as exc:
            plan.fail(exc)
            return
        plan.report()

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def _snapshot(self) -> list[ImagePlan]:
        with self._lock:
            return list(self._plans)

    def _retire(self) -> None:
        """Forget finished images (their tiles still in flight are skipped when pasted)."""
        with self._lock:
            self._plans = [p for p in self._plans if p.active]


def _order(plan: ImagePlan) -> tuple[int, int]:
    return -plan.priority, plan.arrival


def _plans_of(entries: list[Entry]) -> list[ImagePlan]:
    seen: dict[int, ImagePlan] = {}
    for plan, _ in entries:
        seen.setdefault(id(plan), plan)
    return list(seen.values())


@torch.inference_mode()
def run_image(
    runner: TileRunner,
    pixels: np.ndarray,
    network: Network,
    job: TileSettings,
    progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """The (H * scale) x (W * scale) x C output of `network` over `pixels` (same dtype and channels).

    One image, computed and pasted in the calling thread; `TileBatcher.run` shares batches between callers.
    """
    scheduler = Scheduler(runner)
    plan = ImagePlan(runner, pixels, network, job, progress)
    scheduler.add(plan)
    while scheduler.busy():
        scheduler.step()
    return plan.result()


class TileBatcher:
    """The device's single driver: images from any thread, batched together, highest priority first."""

    def __init__(self, runner: TileRunner) -> None:
        self.runner = runner
        self._scheduler = Scheduler(runner)
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def run(
        self,
        pixels: np.ndarray,
        network: Network,
        job: TileSettings,
        progress: Callable[[float], None] | None = None,
        *,
        priority: int = 0,
        cancel: threading.Event | None = None,
    ) -> np.ndarray:
        """Like `run_image`, sharing batches with other callers; blocks until this image is done."""
        plan = ImagePlan(self.runner, pixels, network, job, progress, priority=priority, cancel=cancel)
        with self._wake:
            self._scheduler.add(plan)
            if self._thread is None:
                self._thread = threading.Thread(target=self._drive, name="tile-batcher", daemon=True)
                self._thread.start()
            self._wake.notify()
        return plan.result()  # pastes the outputs here, in the caller's thread, as the driver delivers them

    def _drive(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._scheduler.busy():
                        self._wake.wait()
                try:
                    self._scheduler.step()
                except BaseException as exc:  # a bug here must not leave callers waiting forever
                    log.exception("tile_batcher_failed")
                    self._scheduler.fail_all(exc)

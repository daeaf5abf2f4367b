"""Upscaler: run the super-resolution model on the stored input and store the result."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from services.upscaler import codec
from services.upscaler.engine import Upscaler
from services.upscaler.metrics import UpscalerCollector
from services.upscaler.plan import Cancelled
from shared import tracing
from shared.blobs import pass_on, read_image
from shared.config import Settings
from shared.images import open_image, output_format
from shared.messages import Category, TaskMessage
from shared.nats import Topology
from shared.runtime.job import Job
from shared.runtime.service import StageHandler
from shared.runtime.servicetime import ModelRates
from shared.taskstate.status import StaleRunError, TaskFinishedError
from shared.taskstate.store import TaskGoneError

log = structlog.get_logger()


class ProgressBridge:
    """Carries tile progress from the inference thread to the task state, and a revocation back.

    The thread never waits on NATS: it schedules an update when the previous one is done, and
    raises (aborting inference at the next tile) once an update finds the task ended or deleted.
    `cancel` is set then too, and when the handler is cancelled, so an image still waiting for the
    device is dropped at once.
    """

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self._job = job
        self._loop = loop
        self._pending: Any = None
        self._ended: Exception | None = None
        self.cancel = threading.Event()
        self.batches = 0  # the device batches that held tiles of this image (one progress call each)
        self.began = time.monotonic()
        self.first_batch: float | None = None  # when the first of them was done

    @property
    def ended(self) -> Exception | None:
        """Why the task no longer wants this work (revoked, timed out, deleted), once known."""
        return self._ended

    def __call__(self, fraction: float) -> None:
        self._job.waiting_locally = False  # its tiles are running: from now on, silence means a stall
        self.batches += 1
        self.first_batch = self.first_batch or time.monotonic()
        if self._ended is not None:
            raise self._ended
        if self._pending is None or self._pending.done():
            self._pending = asyncio.run_coroutine_threadsafe(self._report(fraction), self._loop)

    async def _report(self, fraction: float) -> None:
        try:
            await self._job.report_progress(fraction)
        except (TaskFinishedError, TaskGoneError, StaleRunError) as exc:
            self._ended = exc
            self.cancel.set()
        except Exception as exc:  # progress is best effort; the work goes on
            log.warning("progress_update_failed", error=str(exc))


def summarise(bridge: ProgressBridge, model: str, device: str) -> None:
    """The upscale span's account of the image's tile batches (shared/tracing.py; nothing when tracing is off)."""
    if tracing.ENABLED:
        first = bridge.first_batch or time.monotonic()
        tracing.annotate(
            {
                "upscale.batches": bridge.batches,
                "upscale.first_batch_ms": round((first - bridge.began) * 1000, 1),  # decoding, the device queue
                "upscale.model": model,
                "upscale.device": device,
            }
        )


def cpu_threads(configured: int | None = None) -> int:
    """`configured` (TM_CPU_THREADS), else the cores this process may run on (its affinity, as taskset sets it)."""
    if configured is not None:
        return configured
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return len(usable) if usable else os.cpu_count() or 1


async def make_handler(topology: Topology, settings: Settings, upscaler: Upscaler | None = None) -> StageHandler:
    """The upscale handler; its `describe()` reports the device and models for the dashboard."""
    engine = upscaler or Upscaler(
        settings.model_dir,
        device=settings.device,
        default_tile=settings.tile,
        max_output_pixels=settings.max_output_pixels,
        model_wait_s=settings.model_wait_s,
    )
    formats, max_pixels = settings.accepted_formats(), settings.max_input_pixels
    loop = asyncio.get_running_loop()
    # Host image work runs in this handler's threads (asyncio.to_thread), never on the engine's device thread:
    # decoding, pasting tiles into the output (plan.py) and encoding. A PNG output is encoded in bands on this
    # pool, one thread per usable core, so even one image at a time uses them all.
    cpu = ThreadPoolExecutor(cpu_threads(settings.cpu_threads), thread_name_prefix="upscaler-cpu")
    rates = ModelRates()  # megapixels per second per model, in the heartbeat record (the API's eta)

    def run(data: bytes, category: Category, task: TaskMessage, progress: ProgressBridge):
        open_image(data, load=False, max_pixels=max_pixels, formats=formats)  # format and size, before decoding
        picture = codec.decode(data)  # keeps 16-bit PNGs 16-bit, alpha, EXIF orientation, ICC profile
        began = time.monotonic()
        try:
            result = engine.upscale_picture(
                picture, category, task.options, progress, priority=task.priority, cancel=progress.cancel
            )
        except Cancelled:
            if progress.ended is not None:
                raise progress.ended from None  # revoked or deleted while waiting: dropped, not retried
            raise
        # Including the wait for the device behind other tasks' tiles: the rate a task sees under this load.
        rates.observe(result.model_used, picture.width * picture.height, time.monotonic() - began)
        fmt = output_format(task.options.output_format, task.output_url)
        return result, codec.encode(result.picture, fmt, pool=cpu)

    async def handle(job: Job) -> TaskMessage:
        task = job.task
        data = await read_image(topology.js, task, "input")
        category = task.classification.category if task.classification else Category.PHOTO
        # Decoding overlaps other tasks' inference; the engine's batcher then runs the tiles of every task
        # held here, sharing batches between them, highest priority first.
        job.waiting_locally = True
        bridge = ProgressBridge(job, loop)
        try:
            result, encoded = await asyncio.to_thread(run, data, category, task, bridge)
        except asyncio.CancelledError:
            bridge.cancel.set()  # stalled or shutting down: free the device of this image
            raise
        summarise(bridge, result.model_used, result.device)
        handed_on = await pass_on(topology, task, "output", encoded, settings.inline_image_max_bytes)
        return task.model_copy(
            update={
                **handed_on,
                "input_image": None,  # the uploader needs only the output
                "output_width": result.width,
                "output_height": result.height,
                "model_used": result.model_used,
                "worker_type": engine.worker_type(),
            }
        )

    def describe() -> dict[str, object]:
        return engine.describe() | rates.record()

    return StageHandler(handle, collectors=[UpscalerCollector(engine)], describe=describe)

"""The loop every pipeline stage runs: take -> handle() -> record -> publish next -> ack.

A stage service only supplies `handle(job)`. This module owns what must be the same everywhere:
state transitions with compare-and-set, the mapping of errors to acknowledgements, in-progress
heartbeats while a handler runs, retries with backoff, clean-up of a failed task's objects, and
graceful shutdown.

    success              -> state: stage SUCCESS, publish to the next stage (or the handler
                            finished the task), then msg.ack()
    RetryableError/bug   -> msg.nak(backoff) while attempts remain, else FAILURE + ack
    PermanentError       -> FAILURE with the error at once + ack
    task gone / terminal -> (deleted, revoked, timed out) ack and drop: nobody wants the work
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from nats.aio.msg import Msg

from shared.blobs import discard_task_blobs
from shared.config import Settings
from shared.errors import PermanentError, RetryableError
from shared.messages import Stage, TaskMessage, next_stage, work_subject
from shared.nats import Topology
from shared.puller import PriorityPuller
from shared.state import TaskFinishedError, TaskStatus
from shared.tasks import TaskGoneError, TaskStore

log = structlog.get_logger()

MAX_BACKOFF_S = 30.0


def backoff_s(attempt: int, base_s: float) -> float:
    """Exponential backoff with full jitter between half and the whole step, capped."""
    step = min(MAX_BACKOFF_S, base_s * (2 ** max(attempt - 1, 0)))
    return step * random.uniform(0.5, 1.0)


@dataclass
class Job:
    """One message being worked on, as a handler sees it."""

    task: TaskMessage
    status: TaskStatus
    attempt: int
    stage: Stage
    store: TaskStore
    _last_progress_s: float = field(default=0.0)

    async def report_progress(self, fraction: float, min_interval_s: float = 0.25) -> None:
        """Record progress inside this stage; raises TaskFinishedError if the task was ended meanwhile."""
        now = time.monotonic()
        if fraction < 1.0 and now - self._last_progress_s < min_interval_s:
            return
        self._last_progress_s = now
        self.status = await self.store.update(self.task.task_id, lambda s: s.report_progress(self.stage, fraction))


Handler = Callable[[Job], Awaitable[TaskMessage | None]]


@dataclass
class StageCounters:
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0


class StageRunner:
    """Runs `handler` for every message of `stage`, `settings.concurrency` at a time."""

    def __init__(self, stage: Stage, handler: Handler, topology: Topology, settings: Settings, worker_id: str) -> None:
        self.stage = stage
        self.handler = handler
        self.topology = topology
        self.settings = settings
        self.worker_id = worker_id
        self.store = TaskStore(topology.tasks, topology.js)
        self.counters = StageCounters()
        self.in_flight: dict[str, float] = {}  # task_id -> monotonic start
        self._puller = PriorityPuller(topology.nc, stage)
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        await self._puller.start()
        slots = [asyncio.create_task(self._slot()) for _ in range(self.settings.concurrency)]
        await self._stopping.wait()
        await self._puller.close()
        await asyncio.gather(*slots, return_exceptions=True)

    def stop(self) -> None:
        """Stop taking messages; messages in hand are finished first."""
        self._stopping.set()

    async def _slot(self) -> None:
        while not self._stopping.is_set():
            try:
                msg = await self._puller.next()
            except Exception as exc:  # NATS unavailable: keep trying, the client reconnects
                log.warning("take_failed", stage=self.stage.value, error=str(exc))
                await asyncio.sleep(0.5)
                continue
            if msg is None:
                return
            await self.process(msg)

    async def process(self, msg: Msg) -> None:
        try:
            task = TaskMessage.unpack(msg.data)
        except Exception as exc:
            log.error("bad_message", stage=self.stage.value, subject=msg.subject, error=str(exc))
            await msg.term()
            return
        with structlog.contextvars.bound_contextvars(task_id=task.task_id, stage=self.stage.value):
            started = time.monotonic()
            self.in_flight[task.task_id] = started
            try:
                outcome = await self._process(msg, task)
            finally:
                self.in_flight.pop(task.task_id, None)
            log.info(
                "stage_outcome",
                outcome=outcome,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                num_delivered=msg.metadata.num_delivered,
            )

    async def _process(self, msg: Msg, task: TaskMessage) -> str:
        attempt = msg.metadata.num_delivered
        try:
            status = await self.store.update(task.task_id, lambda s: s.start_stage(self.stage, self.worker_id))
        except (TaskGoneError, TaskFinishedError) as exc:
            return await self._drop(msg, task, exc)
        job = Job(task=task, status=status, attempt=attempt, stage=self.stage, store=self.store)
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        try:
            result = await self.handler(job)
        except (TaskGoneError, TaskFinishedError) as exc:
            return await self._drop(msg, task, exc)
        except PermanentError as exc:
            return await self._fail(msg, task, str(exc))
        except RetryableError as exc:
            return await self._retry(msg, task, str(exc), exc.delay_s, attempt)
        except Exception as exc:
            log.exception("handler_bug", error=repr(exc))
            return await self._retry(msg, task, f"internal error: {exc!r}", None, attempt)
        finally:
            heartbeat.cancel()
        try:
            following = next_stage(self.stage)
            if following is not None and result is not None:
                await self.store.update(task.task_id, lambda s: s.finish_stage(self.stage, result))
                await self.topology.js.publish(
                    work_subject(task.priority, following, task.task_id),
                    result.pack(),
                    headers={"Nats-Msg-Id": f"{task.task_id}.{following.value}"},
                )
        except (TaskGoneError, TaskFinishedError) as exc:
            return await self._drop(msg, task, exc)
        await msg.ack()
        self.counters.succeeded += 1
        return "success"

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream we are alive so a long stage is not redelivered to another worker."""
        interval = max(self.settings.ack_wait_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception as exc:
                log.warning("in_progress_failed", error=str(exc))

    async def _drop(self, msg: Msg, task: TaskMessage, reason: Exception) -> str:
        if isinstance(reason, TaskGoneError):
            await discard_task_blobs(self.topology.blobs, task.task_id)
        await msg.ack()
        self.counters.dropped += 1
        log.info("task_dropped", reason=str(reason))
        return "dropped"

    async def _fail(self, msg: Msg, task: TaskMessage, error: str) -> str:
        try:
            await self.store.update(task.task_id, lambda s: s.fail(error, self.stage))
        except (TaskGoneError, TaskFinishedError) as exc:
            return await self._drop(msg, task, exc)
        await discard_task_blobs(self.topology.blobs, task.task_id)
        await msg.ack()
        self.counters.failed += 1
        log.warning("task_failed", error=error)
        return "failure"

    async def _retry(self, msg: Msg, task: TaskMessage, error: str, delay_s: float | None, attempt: int) -> str:
        if attempt > self.settings.max_retries:
            return await self._fail(msg, task, f"{error} (gave up after {attempt} attempts)")
        try:
            await self.store.update(task.task_id, lambda s: s.retry_stage(self.stage, error))
        except (TaskGoneError, TaskFinishedError) as exc:
            return await self._drop(msg, task, exc)
        delay = delay_s if delay_s is not None else backoff_s(attempt, self.settings.retry_base_delay_s)
        await msg.nak(delay=delay)
        self.counters.retried += 1
        log.info("task_retry", error=error, attempt=attempt, delay_s=round(delay, 3))
        return "retry"

"""The loop every pipeline stage runs: take -> handle() -> record -> publish next -> ack.

A stage service only supplies `handle(job)`. This module owns what must be the same everywhere:
state transitions with compare-and-set, the mapping of errors to acknowledgements, in-progress
acks while a handler makes progress, retries with backoff, dead letters, clean-up of a failed
task's objects, and graceful shutdown.

    success              -> state: stage SUCCESS, publish to the next stage (or the handler
                            finished the task), then msg.ack()
    RetryableError/bug   -> msg.nak(backoff) while attempts remain, else FAILURE
    PermanentError       -> FAILURE at once
    FAILURE              -> copy to the dead-letter stream, remove the task's objects, msg.ack()
    task gone / terminal -> (deleted, revoked, timed out) ack and drop: nobody wants the work
    no progress for TM_STALL_TIMEOUT_S -> the handler is cancelled and the message retried
    SIGTERM              -> stop taking; finish in-flight work for TM_SHUTDOWN_GRACE_S, nak the rest
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.msg import Msg

from shared.blobs import discard_task_blobs
from shared.config import Settings
from shared.deadletters import dead_letter
from shared.errors import PermanentError, RetryableError
from shared.messages import Stage, TaskMessage, next_stage, work_subject
from shared.metrics import WorkerMetrics
from shared.nats import Topology
from shared.puller import PriorityPuller
from shared.state import StageAlreadyDoneError, TaskFinishedError, TaskState, TaskStatus
from shared.tasks import TaskGoneError, TaskStore

log = structlog.get_logger()

MAX_BACKOFF_S = 30.0


def backoff_s(attempt: int, base_s: float, cap_s: float = MAX_BACKOFF_S) -> float:
    """Exponential backoff with jitter between half and the whole step, capped at `cap_s`."""
    step = min(cap_s, base_s * (2 ** max(attempt - 1, 0)))
    return step * random.uniform(0.5, 1.0)


@dataclass
class Job:
    """One message being worked on, as a handler sees it."""

    task: TaskMessage
    status: TaskStatus
    attempt: int
    stage: Stage
    store: TaskStore
    last_activity: float = field(default_factory=time.monotonic)
    waiting_locally: bool = False  # queued inside the process (e.g. for the model): alive, not stalled
    _last_progress_s: float = field(default=0.0)

    def touch(self) -> None:
        """Show the job is alive and moving (the watchdog extends the ack deadline only then)."""
        self.last_activity = time.monotonic()

    async def report_progress(self, fraction: float, min_interval_s: float = 0.25) -> None:
        """Record progress inside this stage; raises TaskFinishedError if the task was ended meanwhile."""
        self.touch()
        if fraction >= 1.0:
            return  # the stage's finish write follows at once and marks its share done
        now = time.monotonic()
        if now - self._last_progress_s < min_interval_s:
            return
        self._last_progress_s = now
        self.status = await self.store.update(self.task.task_id, lambda s: s.report_progress(self.stage, fraction))


Handler = Callable[[Job], Coroutine[Any, Any, TaskMessage | None]]


@dataclass
class StageCounters:
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0
    handed_back: int = 0


class StageStalledError(RetryableError):
    pass


class StageRunner:
    """Runs `handler` for every message of `stage`, `settings.concurrency` at a time."""

    def __init__(
        self,
        stage: Stage,
        handler: Handler,
        topology: Topology,
        settings: Settings,
        worker_id: str,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.stage = stage
        self.handler = handler
        self.topology = topology
        self.settings = settings
        self.worker_id = worker_id
        self.store = TaskStore(topology.tasks, topology.js)
        self.counters = StageCounters()
        self.in_flight: dict[str, float] = {}  # task_id -> monotonic start
        self.metrics = metrics  # the process's /metrics (shared/metrics.py); None in tests that need none
        if metrics is not None:
            metrics.watch_in_flight(stage.value, lambda: len(self.in_flight))
        self._puller = PriorityPuller(topology.nc, stage)
        self._stopping = asyncio.Event()
        self._works: set[asyncio.Task[TaskMessage | None]] = set()
        self._handing_back = False

    async def run(self) -> None:
        await self._puller.start()
        slots = [asyncio.create_task(self._slot()) for _ in range(self.settings.concurrency)]
        await self._stopping.wait()
        await self._puller.close()
        _, unfinished = await asyncio.wait(slots, timeout=self.settings.shutdown_grace_s)
        if unfinished:
            self._handing_back = True  # past the grace period: give the work back to other workers
            for work in list(self._works):
                work.cancel()
            await asyncio.wait(unfinished, timeout=10)

    def stop(self) -> None:
        """Stop taking messages; messages in hand are finished (or handed back after the grace period)."""
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
            except Exception as exc:  # NATS trouble while recording: the message will be redelivered
                log.exception("stage_error", error=repr(exc))
                outcome = "error"
            finally:
                self.in_flight.pop(task.task_id, None)
            elapsed_s = time.monotonic() - started
            if self.metrics is not None:
                self.metrics.observe(self.stage.value, outcome, elapsed_s)
            log.info(
                "stage_outcome",
                outcome=outcome,
                duration_ms=round(elapsed_s * 1000, 1),
                num_delivered=msg.metadata.num_delivered,
            )

    async def _process(self, msg: Msg, task: TaskMessage) -> str:
        attempt = msg.metadata.num_delivered or 1
        try:
            status = await self.store.update(task.task_id, lambda s: s.start_stage(self.stage, self.worker_id, task))
        except (TaskGoneError, TaskFinishedError, StageAlreadyDoneError) as exc:
            return await self._drop(msg, task, exc)
        job = Job(task=task, status=status, attempt=attempt, stage=self.stage, store=self.store)
        try:
            result = await self._run_watched(msg, job)
        except (TaskGoneError, TaskFinishedError) as exc:
            return await self._drop(msg, task, exc)
        except PermanentError as exc:
            return await self._fail(msg, task, str(exc), attempt)
        except RetryableError as exc:
            return await self._retry(msg, task, str(exc), exc.delay_s, attempt)
        except asyncio.CancelledError:
            if not self._handing_back:
                raise
            await msg.nak()
            self.counters.handed_back += 1
            return "handed_back"
        except Exception as exc:
            log.exception("handler_bug", error=repr(exc))
            return await self._retry(msg, task, f"internal error: {exc!r}", None, attempt)
        try:
            following = next_stage(self.stage)
            if following is not None and result is not None:
                # Publish first, record second: a crash in between redelivers this message, which
                # runs the stage again and publishes a duplicate the stream drops (same message id).
                # Once the stage is recorded as done, a redelivery is dropped without running.
                await self.topology.js.publish(
                    work_subject(task.priority, following, task.task_id),
                    result.pack(),
                    headers={"Nats-Msg-Id": f"{task.task_id}.{following.value}.run{job.status.run}"},
                )
                await self.store.update(task.task_id, lambda s: s.finish_stage(self.stage, result))
        except TaskFinishedError as exc:
            if exc.state != TaskState.SUCCESS:
                return await self._drop(msg, task, exc)
            # The next stages finished the task before this one's record landed: its work was done and used.
        except TaskGoneError as exc:
            return await self._drop(msg, task, exc)
        await msg.ack()
        self.counters.succeeded += 1
        return "success"

    async def _run_watched(self, msg: Msg, job: Job) -> TaskMessage | None:
        """Run the handler; while it makes progress keep the message ours, cancel it when it stalls."""
        work: asyncio.Task[TaskMessage | None] = asyncio.create_task(self.handler(job))
        self._works.add(work)
        interval = max(min(self.settings.ack_wait_s / 3, self.settings.stall_timeout_s / 2), 0.2)
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=interval)
                if done:
                    return work.result()
                if job.waiting_locally:
                    job.touch()
                idle_s = time.monotonic() - job.last_activity
                if idle_s > self.settings.stall_timeout_s:
                    work.cancel()
                    await asyncio.wait({work})
                    raise StageStalledError(f"{self.stage.value} made no progress for {idle_s:.0f} s")
                try:
                    await msg.in_progress()
                except Exception as exc:
                    log.warning("in_progress_failed", error=str(exc))
        finally:
            self._works.discard(work)
            if not work.done():
                work.cancel()

    async def _drop(self, msg: Msg, task: TaskMessage, reason: Exception) -> str:
        """Ack without working: the task was deleted or ended, or this stage already ran."""
        if isinstance(reason, TaskGoneError):
            await discard_task_blobs(self.topology.blobs, task.task_id)
        elif isinstance(reason, TaskFinishedError):
            await self.store.ensure_event(task.task_id)  # its writer may have died before publishing
        await msg.ack()
        self.counters.dropped += 1
        log.info("task_dropped", reason=str(reason))
        return "dropped"

    async def _fail(self, msg: Msg, task: TaskMessage, error: str, attempt: int) -> str:
        try:
            await self.store.update(task.task_id, lambda s: s.fail(error, self.stage))
        except (TaskGoneError, TaskFinishedError) as exc:
            return await self._drop(msg, task, exc)
        metadata = msg.metadata
        await dead_letter(
            self.topology.js,
            msg.data,
            msg.headers,
            stage=self.stage,
            task_id=task.task_id,
            error=error,
            origin_subject=msg.subject,
            origin_stream=metadata.stream or "",
            origin_seq=metadata.sequence.stream if metadata.sequence else 0,
            attempts=attempt,
        )
        await discard_task_blobs(self.topology.blobs, task.task_id)
        await msg.ack()
        self.counters.failed += 1
        log.warning("task_failed", error=error)
        return "failure"

    async def _retry(self, msg: Msg, task: TaskMessage, error: str, delay_s: float | None, attempt: int) -> str:
        if attempt > self.settings.max_retries:
            return await self._fail(msg, task, f"{error} (gave up after {attempt} attempts)", attempt)
        delay = delay_s if delay_s is not None else backoff_s(attempt, self.settings.retry_base_delay_s)
        try:
            await self.store.update(task.task_id, lambda s: s.retry_stage(self.stage, error, delay))
        except (TaskGoneError, TaskFinishedError) as exc:
            return await self._drop(msg, task, exc)
        await msg.nak(delay=delay)
        self.counters.retried += 1
        log.info("task_retry", error=error, attempt=attempt, delay_s=round(delay, 3))
        return "retry"

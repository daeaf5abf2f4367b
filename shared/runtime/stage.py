"""The loop every pipeline stage runs: take -> record the start -> handle() -> publish next -> ack.

A stage service only supplies `handle(job)`. This module owns what must be the same everywhere:
state transitions with compare-and-set, the mapping of errors to acknowledgements, in-progress
acks while a handler makes progress, retries with backoff, dead letters, clean-up of a failed
task's objects, and graceful shutdown (the slots and the hand-back: shared/runtime/consumer.py).

    success              -> publish to the next stage (or the handler finished the task), then
                            msg.ack(); the next stage's start records this one's end (one state
                            write per stage, not two)
    RetryableError/bug   -> msg.nak(backoff) while attempts remain, else FAILURE
    PermanentError       -> FAILURE at once
    FAILURE              -> copy to the dead-letter stream, remove the task's objects, msg.ack()
    task gone / terminal -> (deleted, revoked, timed out) ack and drop: nobody wants the work
    earlier run          -> (a message left queued when the task was ended and started again) ack and
                            drop, the current run's state untouched
    no progress for TM_STALL_TIMEOUT_S -> the handler is cancelled and the message retried
    SIGTERM              -> stop taking; finish in-flight work for TM_SHUTDOWN_GRACE_S, nak the rest
    redelivered while this process still works on the task (its in-progress acks did not reach a
    broker in failover) -> wait for that run to end, then the state decides (done: dropped)
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import structlog
from nats.aio.msg import Msg

from shared import tracing
from shared.blobs import discard_task_blobs
from shared.config import Settings
from shared.messages import Stage, TaskMessage, next_stage
from shared.nats import Topology
from shared.runtime.consumer import Slots, keep_in_progress
from shared.runtime.deadletters import dead_letter
from shared.runtime.errors import MAX_BACKOFF_S, PermanentError, RetryableError
from shared.runtime.job import Handler, Job
from shared.runtime.metrics import WorkerMetrics
from shared.runtime.ownruns import OwnRuns
from shared.runtime.puller import PriorityPuller
from shared.runtime.servicetime import ServiceTime
from shared.taskstate.status import StageAlreadyDoneError, StaleRunError, TaskFinishedError, TaskStatus, format_time
from shared.taskstate.store import TaskGoneError, TaskStore
from shared.wire import enqueue, message_run

log = structlog.get_logger()


def backoff_s(attempt: int, base_s: float, cap_s: float = MAX_BACKOFF_S) -> float:
    """Exponential backoff with jitter between half and the whole step, capped at `cap_s`."""
    step = min(cap_s, base_s * (2 ** max(attempt - 1, 0)))
    return step * random.uniform(0.5, 1.0)


@dataclass
class StageCounters:
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0
    handed_back: int = 0
    waited_for_own_run: int = 0  # a delivery that came while this process was still working on its task


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
        self.store = TaskStore.of(topology)
        self.counters = StageCounters()
        self._own = OwnRuns(self.store)
        self.in_flight = self._own.in_flight  # the task ids in hand (presence, metrics, micro)
        self.service_time = ServiceTime(stage.value)  # in the heartbeat record: the API's eta
        self.metrics = metrics  # the process's /metrics (shared/runtime/metrics.py); None in tests that need none
        if metrics is not None:
            metrics.watch_in_flight(stage.value, lambda: len(self.in_flight))
        self._puller = PriorityPuller(topology.nc, stage)
        self._slots = Slots(self._puller, self.process, settings.concurrency, settings.shutdown_grace_s, stage.value)

    async def run(self) -> None:
        await self._slots.run()

    def stop(self) -> None:
        """Stop taking messages; messages in hand are finished (or handed back after the grace period)."""
        self._slots.stop()

    async def process(self, msg: Msg) -> None:
        try:
            task = TaskMessage.unpack(msg.data, run_if_absent=message_run(msg.headers))
        except Exception as exc:
            log.error("bad_message", stage=self.stage.value, subject=msg.subject, error=str(exc))
            await msg.term()
            return
        if tracing.ENABLED:  # checked here, so that with tracing off no message pays for it
            with tracing.consuming(self.stage.value, msg, task.task_id, task.run) as span:
                tracing.outcome(span, await self._take(msg, task))
        else:
            await self._take(msg, task)

    async def _take(self, msg: Msg, task: TaskMessage) -> str:
        """Work on a message (or drop it); the outcome."""
        with structlog.contextvars.bound_contextvars(task_id=task.task_id, stage=self.stage.value):
            if task.task_id in self._own.in_flight:
                self.counters.waited_for_own_run += 1
                log.info("redelivered_while_running", num_delivered=msg.metadata.num_delivered)
                await self._own.wait_for(msg, task.task_id, self._keepalive_s)
            if await self._own.finished_here(task.task_id):
                await msg.ack()
                self.counters.dropped += 1
                log.info("task_dropped", reason="this process finished this stage of the task's run already")
                return "dropped"
            started = time.monotonic()
            with self._own.running(task.task_id):
                try:
                    outcome = await self._process(msg, task)
                except Exception as exc:  # NATS trouble while recording: the message will be redelivered
                    log.exception("stage_error", error=repr(exc))
                    outcome = "error"
            elapsed_s = time.monotonic() - started
            if outcome == "success":
                self.service_time.observe(elapsed_s)
            if self.metrics is not None:
                self.metrics.observe(self.stage.value, outcome, elapsed_s)
            log.info(
                "stage_outcome",
                outcome=outcome,
                duration_ms=round(elapsed_s * 1000, 1),
                num_delivered=msg.metadata.num_delivered,
            )
            return outcome

    @property
    def _keepalive_s(self) -> float:
        """How often a message in hand is marked in progress: well within the ack wait and the stall limit."""
        return max(min(self.settings.ack_wait_s / 3, self.settings.stall_timeout_s / 2), 0.2)

    async def _process(self, msg: Msg, task: TaskMessage) -> str:
        attempt = msg.metadata.num_delivered or 1
        stored = msg.metadata.timestamp
        queued_since = format_time(stored) if stored is not None else None
        if task.state_hint is not None and task.state_revision is not None:
            self.store.remember(task.task_id, task.state_hint.encode(), task.state_revision)
        try:
            status = await self.store.update(
                task.task_id, lambda s: s.start_stage(self.stage, self.worker_id, task, queued_since)
            )
        except (TaskGoneError, TaskFinishedError, StageAlreadyDoneError, StaleRunError) as exc:
            return await self._drop(msg, task, exc)
        # The run this start was recorded in; job.status may move on to a later run if the task is ended and
        # started again while the handler works, and this run's next message must not pass as that run's.
        run = status.run
        job = Job(task=task, status=status, attempt=attempt, stage=self.stage, store=self.store)
        try:
            result = await self._run_watched(msg, job)
        except (TaskGoneError, TaskFinishedError, StaleRunError) as exc:
            return await self._drop(msg, task, exc)
        except PermanentError as exc:
            return await self._fail(msg, task, str(exc), attempt)
        except RetryableError as exc:
            return await self._retry(msg, task, str(exc), exc.delay_s, attempt)
        except asyncio.CancelledError:
            if not self._slots.handing_back:
                raise
            await msg.nak()
            self.counters.handed_back += 1
            return "handed_back"
        except Exception as exc:
            log.exception("handler_bug", error=repr(exc))
            return await self._retry(msg, task, f"internal error: {exc!r}", None, attempt)
        following = next_stage(self.stage)
        if following is not None and result is not None:
            # Not recorded in the task's state: the next stage's start records this one's end, as of when
            # the message below was stored. A crash before the ack redelivers this message, which runs the stage
            # again and publishes a duplicate the stream drops (same message id); once the next stage has
            # started, a redelivery is dropped without running.
            handed: dict[str, object] = {"run": run}
            written = self.store.last_written(task.task_id)
            if written is not None:
                handed |= {"state_hint": written[0].decode(), "state_revision": written[1]}
            await enqueue(self.topology.js, result.model_copy(update=handed), following, run)
        self._own.remember_finished(task.task_id, run)
        await msg.ack()
        self.counters.succeeded += 1
        return "success"

    async def _run_watched(self, msg: Msg, job: Job) -> TaskMessage | None:
        """Run the handler; while it makes progress keep the message ours, cancel it when it stalls."""

        def check_progress() -> None:
            if job.waiting_locally:
                job.touch()
            idle_s = time.monotonic() - job.last_activity
            if idle_s > self.settings.stall_timeout_s:
                raise StageStalledError(f"{self.stage.value} made no progress for {idle_s:.0f} s")

        work = self._slots.start_work(self.handler(job))
        return await keep_in_progress(msg, work, self._keepalive_s, check_progress)

    async def _drop(self, msg: Msg, task: TaskMessage, reason: Exception) -> str:
        """Ack without working: the task was deleted or ended, this stage already ran, or the message is of an
        earlier run (whose objects, under the same names, may be the current run's: they stay)."""
        if isinstance(reason, TaskFinishedError):
            # Its writer may have died between the state write and the event: publish what is missing.
            await self.store.ensure_event(task.task_id, max_age_s=self.settings.events_max_age_s)
        if isinstance(reason, TaskGoneError | TaskFinishedError):
            # A deleted or ended task needs no objects; its last writer may have died before removing them.
            await discard_task_blobs(self.topology.blobs, task.task_id)
        await msg.ack()
        self.counters.dropped += 1
        if isinstance(reason, StaleRunError):
            log.info("task_dropped", reason="stale_run", message_run=reason.message_run, task_run=reason.task_run)
        else:
            log.info("task_dropped", reason=str(reason))
        return "dropped"

    async def _fail(self, msg: Msg, task: TaskMessage, error: str, attempt: int) -> str:
        def fail(status: TaskStatus) -> None:
            status.require_run(task.run)  # the task was ended and started again while the handler ran
            status.fail(error, self.stage)

        try:
            await self.store.update(task.task_id, fail)
        except (TaskGoneError, TaskFinishedError, StaleRunError) as exc:
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
        # A delay the remote side asked for (Retry-After) is capped like our own: no server parks a task.
        cap_s = self.settings.retry_max_delay_s
        delay = (
            min(delay_s, cap_s) if delay_s is not None else backoff_s(attempt, self.settings.retry_base_delay_s, cap_s)
        )

        def retry(status: TaskStatus) -> None:
            status.require_run(task.run)
            status.retry_stage(self.stage, error, delay)

        try:
            await self.store.update(task.task_id, retry)
        except (TaskGoneError, TaskFinishedError, StaleRunError) as exc:
            return await self._drop(msg, task, exc)
        await msg.nak(delay=delay)
        self._puller.note_retry(task.priority, delay)
        self.counters.retried += 1
        log.info("task_retry", error=error, attempt=attempt, delay_s=round(delay, 3))
        return "retry"

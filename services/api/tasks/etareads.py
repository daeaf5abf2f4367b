"""What the `eta` of a task is computed from (services/api/tasks/eta.py), read from NATS at a bounded cost.

A GET pays one JetStream request of its own: the task's work message (its stage and stream sequence, and for an
upscale its input size). What every GET shares is read at most once per TTL (the workers' records in the
background while GETs keep coming: see Cached): the workers' heartbeat records (WORKERS_TTL_S) and the stage
consumers' counts per priority (QUEUE_TTL_S). A stale count moves the estimate by about the TTL: a consumer
read a second ago has delivered up to a second's worth of messages since.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import structlog
from nats.js.errors import NotFoundError

from services.api.dashboard.overview import list_workers
from services.api.tasks.eta import Position, StageRate, remaining_s, stage_rates, upscale_s
from shared.messages import PIPELINE, PRIORITIES, Classification, Stage, TaskMessage, UpscaleOptions
from shared.nats import Topology
from shared.taskstate.status import TaskState, TaskStatus, parse_time
from shared.wire import consumer_name, message_run, parse_work_subject, task_work_filter, work_filter, work_stream

WORKERS_TTL_S = 2.0
QUEUE_TTL_S = 1.0
WORKERS_SERVE_STALE_S = 10.0  # two heartbeats
T = TypeVar("T")
log = structlog.get_logger()


class Cached(Generic[T]):
    """A value read at most once per `ttl_s`; callers that come while it is being read wait for that read. With
    `serve_stale_s`, a value older than the TTL but younger than that is answered at once and read again in the
    background (the workers' records: they change once a heartbeat, and reading them is a request per worker).
    An empty value is not kept (`keep_empty=False`): a fresh system's first measurements count at once."""

    def __init__(
        self, read: Callable[[], Awaitable[T]], ttl_s: float, keep_empty: bool = True, serve_stale_s: float = 0.0
    ) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._keep_empty = keep_empty
        self._serve_stale_s = serve_stale_s
        self._value: T | None = None
        self._read_at = -float("inf")
        self._reading = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    def _stale(self) -> bool:
        return time.monotonic() - self._read_at >= self._ttl_s

    def _unusable(self, fits: Callable[[T], bool] | None) -> bool:
        if self._value is None or (not self._value and not self._keep_empty):
            return True
        if time.monotonic() - self._read_at >= max(self._ttl_s, self._serve_stale_s):
            return True
        return fits is not None and not fits(self._value)

    async def _refresh(self) -> None:
        async with self._reading:
            value = await self._read()
            self._value = value
            self._read_at = time.monotonic() if value or self._keep_empty else -float("inf")

    async def get(self, fits: Callable[[T], bool] | None = None) -> T:
        """The value; read now when there is none yet or `fits` says it cannot answer the caller, else read again
        in the background when older than the TTL."""
        if self._unusable(fits):
            async with self._reading:
                if self._unusable(fits):
                    self._value = await self._read()
                    self._read_at = time.monotonic() if self._value or self._keep_empty else -float("inf")
        elif self._stale() and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh_logged())
        assert self._value is not None
        return self._value

    async def _refresh_logged(self) -> None:
        try:
            await self._refresh()
        except Exception as exc:  # NATS away for a moment: the next GET tries again
            log.warning("eta_refresh_failed", error=repr(exc))


@dataclass(frozen=True)
class Depth:
    """One stage consumer of one priority stream: messages not delivered yet, the last delivered one's stream
    sequence, and the newest message's of the stage (0 when none waits)."""

    pending: int
    delivered_seq: int
    last_seq: int = 0

    def ahead_of(self, seq: int) -> int:
        """Undelivered messages of the stage stored before sequence `seq`. The stream holds every stage's messages
        of its priority (and counts the sequences of those already taken), so the stage's waiting messages are
        taken as spread evenly over the sequences between the last delivered and the newest."""
        if seq <= self.delivered_seq or self.pending == 0:
            return 0
        if seq > self.last_seq:  # stored after this count was read: every message counted is before it
            return self.pending
        span = self.last_seq - self.delivered_seq - 1
        share = (seq - self.delivered_seq - 1) / span if span > 0 else 0.0
        return round((self.pending - 1) * share)


class EtaSource:
    """Estimates a task's completion from the measured rates and the live queues (one per API process)."""

    def __init__(self, topology: Topology) -> None:
        self._topology = topology
        self._rates = Cached(self._read_rates, WORKERS_TTL_S, keep_empty=False, serve_stale_s=WORKERS_SERVE_STALE_S)
        self._depths = {
            (priority, stage): Cached(self._depth_reader(priority, stage), QUEUE_TTL_S)
            for priority in PRIORITIES
            for stage in PIPELINE
        }

    async def remaining_s(self, status: TaskStatus) -> float | None:
        """Seconds until `status`'s task is done; None when it has ended or nothing is measured yet (and when
        NATS does not answer: an estimate is never worth failing the GET for)."""
        if status.state.terminal:
            return None
        try:
            rates = await self._rates.get()
            if not rates:
                return None
            position, classification = await self._position(status)
            own = None
            if Stage.UPSCALE in rates and PIPELINE.index(position.stage) <= PIPELINE.index(Stage.UPSCALE):
                own = upscale_s(rates[Stage.UPSCALE], classification or status.classification, _options(status))
            return remaining_s(position, rates, own)
        except Exception as exc:
            log.warning("eta_unknown", task_id=status.task_id, error=repr(exc))
            return None

    async def _read_rates(self) -> dict[Stage, StageRate]:
        return stage_rates(await list_workers(self._topology))

    def _depth_reader(self, priority: int, stage: Stage) -> Callable[[], Awaitable[Depth]]:
        async def read() -> Depth:
            js, stream = self._topology.js, work_stream(priority)
            try:
                info = await js.consumer_info(stream, consumer_name(stage))
            except NotFoundError:  # not declared yet
                return Depth(0, 0)
            pending, delivered = info.num_pending or 0, info.delivered.stream_seq if info.delivered else 0
            last = 0
            if pending:
                try:
                    last = (await js.get_last_msg(stream, work_filter(priority, stage))).seq or 0
                except NotFoundError:  # taken meanwhile
                    pending = 0
            return Depth(pending, delivered, last)

        return read

    async def _pending(self, priorities: list[int], stage: Stage, seq: int = 0) -> list[Depth]:
        """The stage's counts at each of `priorities`; the first one's read again if it is older than the
        message `seq` (a task of a burst asks about the queue right after joining it: a count of a moment
        before would leave out the messages stored since, just before its own)."""
        depths = [self._depths[(p, stage)] for p in priorities]
        own = depths[0].get((lambda depth: seq <= max(depth.last_seq, depth.delivered_seq)) if seq else None)
        return list(await asyncio.gather(own, *(depth.get() for depth in depths[1:])))

    async def _position(self, status: TaskStatus) -> tuple[Position, Classification | None]:
        """Where the task is, from its work message (its stage, its sequence against the consumer's), and the
        input size that message carries once classified."""
        priority = status.priority
        stream, subject = work_stream(priority), task_work_filter(priority, status.task_id)
        try:
            raw = await self._topology.js.get_last_msg(stream, subject)
        except NotFoundError:
            raw = None
        if raw is None or not raw.subject:  # between its entry's write and its first message: at the start
            stage = next((s.name for s in status.subtasks if s.state != TaskState.SUCCESS), PIPELINE[0])
            seq = 0
        else:
            stage, seq = parse_work_subject(raw.subject)[1], raw.seq or 0
        higher = [p for p in PRIORITIES if p >= priority]
        later = PIPELINE[PIPELINE.index(stage) + 1 :]
        depths = await asyncio.gather(self._pending(higher, stage, seq), *(self._pending(higher, s) for s in later))
        waiting = {s: sum(d.pending for d in found) for s, found in zip(later, depths[1:], strict=True)}
        now = datetime.now(UTC)
        entry = status.subtask(stage)
        if entry.state == TaskState.STARTED and entry.started_at:
            running = max((now - parse_time(entry.started_at)).total_seconds(), 0.0)
            position = Position(stage, running_s=running, waiting=waiting)
        else:
            own, *above = depths[0]  # `higher` starts with the task's own priority
            # Taken already (seq up to the last delivered) and given back with a retry's delay: next when due.
            ahead = own.ahead_of(seq)
            ready_in = (parse_time(entry.queued_at) - now).total_seconds() if entry.queued_at else 0.0
            ahead += sum(d.pending for d in above)
            position = Position(stage, ahead=ahead, ready_in_s=max(ready_in, 0.0), waiting=waiting)
        classification = None
        if raw is not None and stage == Stage.UPSCALE and status.classification is None:
            classification = TaskMessage.unpack(raw.data or b"", message_run(raw.headers)).classification
        return position, classification


def _options(status: TaskStatus) -> UpscaleOptions:
    try:
        return UpscaleOptions.model_validate(status.kwargs)
    except ValueError:
        return UpscaleOptions()

"""The task-state store: one KV entry per task, written only with compare-and-set.

Every writer reads the entry, applies a transition from shared/taskstate/status.py and writes it back
expecting the revision it read; on a conflict it re-reads and re-applies. Two writers therefore can
never lose each other's update, and a terminal state can never be overwritten. Whoever writes a
terminal state also publishes the task's event, so subscribers see exactly one per task.

Every write that changes what a change event reports (shared/taskstate/events.py) publishes one too. Those of
non-terminal writes go out as plain core publishes into the stream (no acknowledgement to wait for
on the critical path: at most once, and a failed one never undoes the state write); the terminal
one is published with acknowledgement and retries, after the terminal event: a stored terminal change
event (`task.changes.<task_id>.state`, which can be looked up by task) shows that both went out.

A writer killed between the terminal state write and those publishes leaves a task ended without its
events. Whoever meets such a task later (a redelivered message, the sweeper) calls `ensure_event`,
which looks for the marker and publishes what is missing under the same message ids.

A store remembers the last value it wrote for a task, so its next write to that task (a progress
report after a stage's start) tries the compare-and-set on that value first and reads only on a
conflict: one KV get fewer per write, with the same guarantee (the revision decides). A stage hands
the value it wrote to the next stage in the work message (`state_hint`), which remembers it the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError, StaleConnectionError
from nats.js import JetStreamContext
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from shared import tracing
from shared.taskstate.events import EventKind, Snapshot, TaskEvent
from shared.taskstate.status import TaskStatus, parse_time
from shared.wire import EVENTS_STREAM, change_subject, event_subject, terminal_event_id

if TYPE_CHECKING:
    from shared.nats import Topology

log = structlog.get_logger()
MAX_CAS_ATTEMPTS = 50
REMEMBERED_WRITES = 1024  # tasks whose last write a store keeps (a stage holds a few at a time)
UNKNOWN_OUTCOME_PAUSE_S = 0.2
# Errors after which a write may or may not have been applied (the answer, not the request, was lost).
UNKNOWN_OUTCOME = (
    TimeoutError,
    ConnectionClosedError,
    NoRespondersError,
    NoStreamResponseError,  # a publish (KV write) while the stream has no leader
    StaleConnectionError,
    OutboundBufferLimitError,
    ServiceUnavailableError,
)
EVENT_PUBLISH_ATTEMPTS = 8  # about 20 s of retries
READ_RETRY_S = 20.0  # longer than an R3 leader election or a quick server restart


class TaskGoneError(Exception):
    """The task's entry no longer exists (deleted by a client)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} no longer exists")
        self.task_id = task_id


class TaskStore:
    def __init__(self, kv: KeyValue, js: JetStreamContext, nc: NATS) -> None:
        self._kv = kv
        self._js = js
        self._nc = nc  # change events go out as core publishes (see _announce)
        self._written: OrderedDict[str, tuple[bytes, int]] = OrderedDict()  # task_id -> (value, revision)

    @classmethod
    def of(cls, topology: Topology) -> TaskStore:
        return cls(topology.tasks, topology.js, topology.nc)

    def last_written(self, task_id: str) -> tuple[bytes, int] | None:
        """The value and revision this store last wrote for a task, while it remembers them."""
        return self._written.get(task_id)

    def remember(self, task_id: str, value: bytes, revision: int) -> None:
        """Take `value` at `revision` as the task's entry for the next update's first compare-and-set (a
        value another store wrote, handed over in a message); a stale one costs a conflict and a read."""
        self._written[task_id] = (value, revision)
        if len(self._written) > REMEMBERED_WRITES:
            self._written.popitem(last=False)

    async def create(self, status: TaskStatus) -> int:
        """Store a new task; fails if the id exists (ids are UUIDs, so that is a bug)."""
        revision = await self._kv.create(status.task_id, status.to_json())
        await self._announce(TaskEvent.between(Snapshot.of(None), status, revision))
        return revision

    async def get(self, task_id: str) -> TaskStatus | None:
        found = await self.get_with_revision(task_id)
        return found[0] if found else None

    async def get_with_revision(self, task_id: str) -> tuple[TaskStatus, int] | None:
        try:
            entry = await self._kv.get(task_id)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return TaskStatus.from_json(entry.value), entry.revision

    async def update(self, task_id: str, transition: Callable[[TaskStatus], object]) -> TaskStatus:
        """Apply `transition` (which mutates the status it gets) with compare-and-set; return the result.

        Raises TaskGoneError if the task was deleted, and whatever `transition` raises
        (TaskFinishedError when the task is already terminal). Rides out broker hiccups: giving up
        half-way (e.g. after the uploader wrote the output) would only cause a redelivery that
        repeats the work.
        """
        sent: dict[bytes, tuple[TaskStatus, Snapshot]] = {}  # what this call wrote without hearing back
        for attempt in range(MAX_CAS_ATTEMPTS):
            remembered = self._written.pop(task_id, None) if attempt == 0 else None
            if remembered is not None:
                status, revision = TaskStatus.from_json(remembered[0]), remembered[1]
            else:
                found = await self._read(task_id)
                if found is None:
                    raise TaskGoneError(task_id)
                status, revision = found
                ours = sent.get(status.to_json())
                if ours is not None:  # a write whose answer we lost did land: it is this one
                    return await self._written_ok(task_id, *ours, revision)
            before = Snapshot.of(status)
            try:
                transition(status)
            except Exception:
                if remembered is None:
                    raise
                continue  # judged on our own last write, which may be stale: judge on a fresh read
            payload = status.to_json()
            written = await self._write(task_id, payload, revision)
            if written is None:
                sent[payload] = (status, before)
            elif written:
                return await self._written_ok(task_id, status, before, written)
        raise RuntimeError(f"task {task_id}: state update kept conflicting")

    async def _written_ok(self, task_id: str, status: TaskStatus, before: Snapshot, revision: int) -> TaskStatus:
        change = TaskEvent.between(before, status, revision)
        if status.state.terminal:
            if before.state is None or not before.state.terminal:
                await self.publish_event(status, change)
        else:
            await self._announce(change)
            self._written[task_id] = (status.to_json(), revision)
            if len(self._written) > REMEMBERED_WRITES:
                self._written.popitem(last=False)
        return status

    async def _read(self, task_id: str) -> tuple[TaskStatus, int] | None:
        """get_with_revision, retried through a leader election or a quick server restart."""
        deadline, pause = time.monotonic() + READ_RETRY_S, UNKNOWN_OUTCOME_PAUSE_S
        while True:
            try:
                return await self.get_with_revision(task_id)
            except UNKNOWN_OUTCOME:
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _write(self, task_id: str, payload: bytes, revision: int) -> int | None:
        """Compare-and-set: the new revision, 0 on a conflict, None when unknown (the answer was lost:
        a stream leader died after applying it, a reconnect); the caller re-reads and recognises its value."""
        try:
            return await self._kv.update(task_id, payload, last=revision)
        except KeyWrongLastSequenceError:
            return 0
        except UNKNOWN_OUTCOME:
            await asyncio.sleep(UNKNOWN_OUTCOME_PAUSE_S)
            return None

    async def publish_event(self, status: TaskStatus, change: TaskEvent | None = None) -> None:
        """Publish the terminal event, then its change event, retrying through a broker hiccup: the
        state is already written, so giving up here would leave subscribers without it. The message
        ids make every retry (and a republish after a crash) a duplicate the stream drops. One after
        the other, so that a stored change event proves the terminal one was stored (ensure_event)."""
        terminal_id = terminal_event_id(status.task_id, status.run, status.state.value)
        await self._publish(event_subject(status.task_name, status.state.value), status.to_json(), terminal_id)
        if change is not None:
            await self._publish(change.subject, change.to_json(), change.event_id)

    async def _publish(self, subject: str, data: bytes, message_id: str) -> None:
        headers = {"Nats-Msg-Id": message_id}
        if tracing.ENABLED:
            tracing.inject(headers)  # the span that ended the task: the webhook's parent (services/notifier)
        for attempt in range(EVENT_PUBLISH_ATTEMPTS):
            try:
                await self._js.publish(subject, data, headers=headers)
                return
            except UNKNOWN_OUTCOME:
                if attempt == EVENT_PUBLISH_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))

    async def _announce(self, change: TaskEvent | None) -> None:
        """Publish a non-terminal change event without waiting for the stream's acknowledgement:
        one buffered write on the connection (ordered before this writer's later publishes)."""
        if change is None:
            return
        try:
            # A core publish to a stream's subject is stored all the same, and the message id still
            # deduplicates it.
            await self._nc.publish(change.subject, change.to_json(), headers={"Nats-Msg-Id": change.event_id})
        except Exception as exc:  # the state is written; a lost progress note must not fail the caller
            log.warning("change_event_not_sent", task_id=change.task_id, kind=change.kind.value, error=repr(exc))

    async def ensure_event(self, task_id: str, *, max_age_s: float) -> bool:
        """Publish an ended task's events if they are not in the events stream; True when it did.

        Its writer may have died between the terminal state write and the publishes; a redelivered
        message or the sweeper that finds the task ended calls this. The stored terminal change event
        is the marker (publish_event stores it last). A task that ended more than `max_age_s` ago
        (the events stream's retention) is left alone: its events would have expired anyway."""
        found = await self.get_with_revision(task_id)
        if found is None:
            return False
        status, revision = found
        if not status.state.terminal or status.completed_at is None:
            return False
        if (datetime.now(UTC) - parse_time(status.completed_at)).total_seconds() > max_age_s:
            return False
        if await self._ended_event_stored(status):
            return False
        # What the state was before is not known any more: the change event says previous_state null.
        unknown_before = Snapshot(None, Snapshot.of(status).stages, status.progress, status.run)
        await self.publish_event(status, TaskEvent.between(unknown_before, status, revision))
        log.warning("terminal_event_restored", task_id=task_id, state=status.state.value, run=status.run)
        return True

    async def _ended_event_stored(self, status: TaskStatus) -> bool:
        try:
            stored = await self._js.get_last_msg(EVENTS_STREAM, change_subject(status.task_id, EventKind.STATE.value))
        except NotFoundError:
            return False
        event = TaskEvent.from_json(stored.data or b"{}")
        return event.state == status.state and event.run == status.run

    async def delete(self, task_id: str) -> None:
        self._written.pop(task_id, None)
        await self._kv.purge(task_id)

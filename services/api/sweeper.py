"""The sweeper: ends tasks that waited in a queue past TM_QUEUE_TIMEOUT_S, and dead-letters
messages JetStream stopped delivering. Runs in every API process; one holds the lease and works.

Timeout rule: each stage's wait counts on its own. A task TIMEs OUT when its message for a stage
waited longer than the timeout without a worker taking it (at the first stage, or at any later
one: a stage with no running worker ends its tasks instead of hoarding them). Time spent in a
worker's hands never counts, nor does a retry's backoff delay.

Candidates come from the work streams themselves, oldest message first (stream order is arrival
order), and each is confirmed against the task's state before anything is written, so the cost
follows the number of overdue messages, not the number of tasks.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from services.api.tasks.index import TaskIndex
from shared.blobs import discard_task_blobs
from shared.config import Settings
from shared.messages import PRIORITIES, Stage, TaskMessage
from shared.nats import Topology
from shared.runtime.deadletters import dead_letter
from shared.runtime.lease import Lease
from shared.taskstate.lifecycle import Queued, end_task
from shared.taskstate.status import TaskFinishedError, TaskState, TaskStatus, parse_time
from shared.taskstate.store import TaskGoneError, TaskStore
from shared.topology import max_deliveries
from shared.wire import parse_work_subject, priority_filter, work_stream

log = structlog.get_logger()

MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"
SWEEP_INTERVAL_S = 1.0
HISTORY_CHECK_S = 60.0  # ended tasks past TM_RESULT_TTL_S are removed this often


class Sweeper:
    def __init__(self, topology: Topology, settings: Settings, holder: str, index: TaskIndex | None = None) -> None:
        self.topology = topology
        self.index = index  # the API's list of tasks: which ended tasks are past their keeping time
        self.expired = 0
        self._history_checked = 0.0
        self.settings = settings
        self.store = TaskStore.of(topology)
        self.lease = Lease(topology.leases, "sweeper", holder)
        self.timed_out = 0
        self.dead_lettered = 0
        self.events_restored = 0  # ended tasks found without their terminal event
        self._advisories: Subscription | None = None
        self._next_look: dict[int, datetime] = {}  # priority -> when its stream can next hold an overdue message

    async def run(self) -> None:
        """Hold (or wait for) the lease and sweep while holding it, until cancelled."""
        renew_every = self.settings.lease_ttl_s / 3
        last_renewal = 0.0
        try:
            while True:
                if time.monotonic() - last_renewal >= renew_every or not self.lease.held:
                    was_held = self.lease.held
                    try:
                        await self.lease.keep()
                    except Exception as exc:  # NATS unavailable: try again next round
                        log.warning("lease_renewal_failed", error=str(exc))
                    last_renewal = time.monotonic()
                    if self.lease.held != was_held:
                        log.info("sweeper_lease", held=self.lease.held, holder=self.lease.holder)
                        await self._follow_advisories(self.lease.held)
                if self.lease.held:
                    try:
                        await self.sweep()
                        if time.monotonic() - self._history_checked >= self._history_every_s:
                            self._history_checked = time.monotonic()
                            await self.expire_history()
                    except Exception as exc:
                        log.warning("sweep_failed", error=repr(exc))
                await asyncio.sleep(SWEEP_INTERVAL_S if self.lease.held else renew_every)
        finally:
            await self._follow_advisories(False)
            await self.lease.release()

    async def sweep(self) -> None:
        """One pass over every work stream's overdue messages.

        A stream is looked at again only when a message in it can have become overdue: a stream found
        empty, or whose oldest message is not overdue yet, cannot hold an overdue one before that
        message's (or now's) time plus the timeout. A stream with candidates that stayed (in a
        worker's hands, or waiting for a retry) is looked at every pass. An idle system thus asks
        each stream once per timeout, not once a second.
        """
        timeout = timedelta(seconds=self.settings.queue_timeout_s)
        now = datetime.now(UTC)
        cutoff = now - timeout
        for priority in PRIORITIES:
            if now < self._next_look.get(priority, now):
                continue
            seq, considered, next_look = 1, False, now + timeout
            while True:
                try:
                    raw = await self.topology.js.get_msg(
                        work_stream(priority), seq=seq, next=True, subject=priority_filter(priority)
                    )
                except NotFoundError:
                    break
                if raw.time is not None and raw.time > cutoff:
                    next_look = raw.time + timeout  # every later message arrived later still
                    break
                await self._consider(raw)
                considered = True
                seq = (raw.seq or seq) + 1
            self._next_look[priority] = now if considered else next_look

    @property
    def _history_every_s(self) -> float:
        return min(HISTORY_CHECK_S, self.settings.result_ttl_s / 2)

    async def expire_history(self) -> None:
        """Remove the tasks that ended more than TM_RESULT_TTL_S ago (their entry; their objects went when
        they ended). Unfinished tasks stay, however old."""
        if self.index is None:
            return
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.result_ttl_s)
        for task_id in self.index.ended_before(cutoff):
            await self.store.delete(task_id)
            self.expired += 1
            log.info("task_expired", task_id=task_id)

    async def _consider(self, raw: RawStreamMsg) -> None:
        priority, stage, task_id = parse_work_subject(raw.subject or "")
        status = await self.store.get(task_id)
        if status is None or status.state.terminal:
            # Left behind by a deleted or finished task: its writer may have died before publishing the
            # event, removing the objects or acknowledging (purge). Finish that work, then remove it.
            await self._finish_ended(task_id, terminal=status is not None)
            await self.topology.js.delete_msg(work_stream(priority), raw.seq or 0)
            return
        if self._abandoned(status, stage):
            # Its last delivery started and never finished, and JetStream will not deliver it again;
            # the max-deliveries advisory was missed (e.g. while the lease changed hands).
            await self.dead_letter_undeliverable(raw, status.subtask(stage).attempts)
            return
        arrived = raw.time or datetime.now(UTC)
        if not self._overdue(status, stage, arrived):
            return
        try:
            ended = await end_task(
                self.topology,
                self.store,
                task_id,
                TaskState.TIMEOUT,
                f"waited more than {self.settings.queue_timeout_s:g} s in the {stage.value} queue",
                still_wanted=lambda s: self._overdue(s, stage, arrived),
                waiting_in=Queued(stage, arrived, raw.seq or 0),  # its seq bounds the purge
            )
        except (TaskFinishedError, TaskGoneError):
            return
        if ended is not None:
            self.timed_out += 1
            log.info("task_timed_out", task_id=task_id, stage=stage.value)

    async def _finish_ended(self, task_id: str, *, terminal: bool) -> None:
        """What the last writer of a deleted or ended task may not have lived to do."""
        if terminal:
            await self._restore_event(task_id)
        await discard_task_blobs(self.topology.blobs, task_id)

    async def _restore_event(self, task_id: str) -> None:
        if await self.store.ensure_event(task_id, max_age_s=self.settings.events_max_age_s):
            self.events_restored += 1

    def _abandoned(self, status: TaskStatus, stage: Stage) -> bool:
        entry = status.subtask(stage)
        if entry.state != TaskState.STARTED or entry.attempts < max_deliveries(self.settings) or not entry.started_at:
            return False
        silent_s = (datetime.now(UTC) - parse_time(entry.started_at)).total_seconds()
        return silent_s > 2 * self.settings.ack_wait_s + self.settings.stall_timeout_s

    def _overdue(self, status: TaskStatus, stage: Stage, arrived: datetime) -> bool:
        """Whether the task waits in `stage`'s queue (its message there stored at `arrived`) past the timeout."""
        since = status.queued_since(stage, arrived)
        return since is not None and datetime.now(UTC) - since > timedelta(seconds=self.settings.queue_timeout_s)

    async def _follow_advisories(self, on: bool) -> None:
        if on and self._advisories is None:
            self._advisories = await self.topology.nc.subscribe(MAX_DELIVERIES_ADVISORY, cb=self._on_max_deliveries)
        elif not on and self._advisories is not None:
            try:
                await self._advisories.unsubscribe()
            except Exception:
                pass
            self._advisories = None

    async def _on_max_deliveries(self, msg: Msg) -> None:
        advisory = json.loads(msg.data)
        stream, seq, deliveries = advisory.get("stream", ""), advisory.get("stream_seq", 0), advisory.get("deliveries")
        if not stream.startswith("TM_WORK_P"):
            return
        try:
            raw = await self.topology.js.get_msg(stream, seq=seq)
            await self.dead_letter_undeliverable(raw, deliveries)
        except Exception as exc:
            log.warning("max_deliveries_handling_failed", stream=stream, seq=seq, error=repr(exc))

    async def dead_letter_undeliverable(self, raw: RawStreamMsg, deliveries: int | None) -> None:
        """A message no worker ever finished (each one crashed or went silent): fail its task for good."""
        task = TaskMessage.unpack(raw.data or b"")
        stage = parse_work_subject(raw.subject or "")[1]
        error = f"{stage.value}: delivered {deliveries} times without completing (workers crashed or hung)"
        try:
            await self.store.update(task.task_id, lambda s: s.fail(error, stage))
        except TaskFinishedError:
            await self._restore_event(task.task_id)
        except TaskGoneError:
            pass
        else:
            await dead_letter(
                self.topology.js,
                raw.data or b"",
                raw.headers,
                stage=stage,
                task_id=task.task_id,
                error=error,
                origin_subject=raw.subject or "",
                origin_stream=raw.stream or work_stream(task.priority),
                origin_seq=raw.seq or 0,
                attempts=deliveries or 0,
            )
            self.dead_lettered += 1
            log.warning("task_dead_lettered", task_id=task.task_id, stage=stage.value, deliveries=deliveries)
        await self.topology.js.delete_msg(work_stream(task.priority), raw.seq or 0)
        await discard_task_blobs(self.topology.blobs, task.task_id)

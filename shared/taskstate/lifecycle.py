"""Ending a task from outside the pipeline (TIMEOUT by the sweeper, REVOKED by a client).

The state write comes first, with compare-and-set: from then on every worker that touches the task
drops it. Then its queued message, if any, is purged (any stage, one priority stream) and its stored
objects removed.

The purge is bounded by sequence: it removes the task's messages up to the one read before the state
write, never every message of its subject. Once the task is ended a retry (POST
/api/v1/tasks/{id}/retry, `start_new_run`) may queue the next run's first message at once; an ender
that stalled between its write and its purge would remove that message too, and the new run would
sit PENDING with nothing queued until the queue timeout. Every message of the new run is stored after
the state write, so after the read: the bound spares them all. A message of the ended run stored after
the read stays behind: a worker that takes it while the task is ended drops it, the sweeper removes
one nobody takes, and a retry purges the task's messages before it queues its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js.errors import NotFoundError

from shared.blobs import discard_task_blobs
from shared.messages import Stage
from shared.nats import Topology
from shared.taskstate.status import TaskState, TaskStatus, format_time
from shared.taskstate.store import TaskStore
from shared.wire import parse_work_subject, task_work_filter, work_stream


@dataclass(frozen=True)
class Queued:
    """A task's work message as read from its priority stream: the stage whose queue holds it, when it was
    stored, and its stream sequence (the purge's bound: see the module docstring)."""

    stage: Stage
    stored_at: datetime
    seq: int


async def queued_at(topology: Topology, status: TaskStatus) -> Queued | None:
    """The task's last work message (the stage whose queue holds it, when and where it was stored); None
    when none is queued."""
    try:
        raw = await topology.js.get_last_msg(
            work_stream(status.priority), task_work_filter(status.priority, status.task_id)
        )
    except NotFoundError:
        return None
    return Queued(parse_work_subject(raw.subject or "")[1], raw.time or datetime.now(UTC), raw.seq or 0)


async def purge_queued(topology: Topology, status: TaskStatus, *, through: Queued | None = None) -> None:
    """Remove the task's work messages from its priority stream: those stored up to `through` (read before
    the terminal write; later ones may be a new run's), or every one when not given (the task is deleted)."""
    await topology.js.purge_stream(
        work_stream(status.priority),
        subject=task_work_filter(status.priority, status.task_id),
        seq=through.seq + 1 if through is not None else None,  # JetStream keeps the filter's messages from seq on
    )


async def end_task(
    topology: Topology,
    store: TaskStore,
    task_id: str,
    state: TaskState,
    reason: str,
    still_wanted: Callable[[TaskStatus], bool] = lambda status: True,
    waiting_in: Queued | None = None,
) -> TaskStatus | None:
    """End a task in `state` unless `still_wanted` says otherwise at write time; None when not ended.

    `waiting_in`: its message, read before this call: the stage whose queue holds it and when it was stored
    (see TaskStatus.end), and its sequence, which bounds the purge. Looked up when not given, so the stages
    before that queue are recorded done; with no message queued there is nothing to purge.
    Raises TaskFinishedError (already terminal) and TaskGoneError (deleted) from the state write.
    """
    if waiting_in is None:
        found = await store.get_with_revision(task_id)
        if found is not None:
            current, revision = found
            store.remember(task_id, current.to_json(), revision)  # the write below needs no second read
            waiting_in = await queued_at(topology, current)
    stage, since = (waiting_in.stage, format_time(waiting_in.stored_at)) if waiting_in is not None else (None, None)

    def transition(status: TaskStatus) -> None:
        if still_wanted(status):
            status.end(state, reason, stage, since)

    ended = await store.update(task_id, transition)
    if ended.state != state:
        return None
    if waiting_in is not None:
        await purge_queued(topology, ended, through=waiting_in)
    await discard_task_blobs(topology.blobs, task_id)
    return ended

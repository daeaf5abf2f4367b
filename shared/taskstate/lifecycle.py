"""Ending a task from outside the pipeline (TIMEOUT by the sweeper, REVOKED by a client).

The state write comes first, with compare-and-set: from then on every worker that touches the task
drops it. Then its queued message, if any, is purged (by subject: any stage, one priority stream)
and its stored objects removed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from nats.js.errors import NotFoundError

from shared.blobs import discard_task_blobs
from shared.messages import Stage
from shared.nats import Topology
from shared.taskstate.status import TaskState, TaskStatus, format_time
from shared.taskstate.store import TaskStore
from shared.wire import parse_work_subject, task_work_filter, work_stream


async def queued_at(topology: Topology, status: TaskStatus) -> tuple[Stage, datetime] | None:
    """The stage whose queue holds the task's message, and when it was stored; None when none is queued."""
    try:
        raw = await topology.js.get_last_msg(
            work_stream(status.priority), task_work_filter(status.priority, status.task_id)
        )
    except NotFoundError:
        return None
    return parse_work_subject(raw.subject or "")[1], raw.time or datetime.now(UTC)


async def purge_queued(topology: Topology, status: TaskStatus) -> None:
    await topology.js.purge_stream(
        work_stream(status.priority), subject=task_work_filter(status.priority, status.task_id)
    )


async def end_task(
    topology: Topology,
    store: TaskStore,
    task_id: str,
    state: TaskState,
    reason: str,
    still_wanted: Callable[[TaskStatus], bool] = lambda status: True,
    waiting_in: tuple[Stage, datetime] | None = None,
) -> TaskStatus | None:
    """End a task in `state` unless `still_wanted` says otherwise at write time; None when not ended.

    `waiting_in`: the stage whose queue holds its message, and when that was stored (see TaskStatus.end);
    looked up when not given, so the stages before that queue are recorded done.
    Raises TaskFinishedError (already terminal) and TaskGoneError (deleted) from the state write.
    """
    if waiting_in is None:
        found = await store.get_with_revision(task_id)
        if found is not None:
            current, revision = found
            store.remember(task_id, current.to_json(), revision)  # the write below needs no second read
            waiting_in = await queued_at(topology, current)
    stage, since = waiting_in if waiting_in is not None else (None, None)

    def transition(status: TaskStatus) -> None:
        if still_wanted(status):
            status.end(state, reason, stage, format_time(since) if since is not None else None)

    ended = await store.update(task_id, transition)
    if ended.state != state:
        return None
    await purge_queued(topology, ended)
    await discard_task_blobs(topology.blobs, task_id)
    return ended

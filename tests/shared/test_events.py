"""Change events: what each write reports (pure), and what the store publishes on a real server."""

from __future__ import annotations

import json

import pytest
from nats.aio.msg import Msg

from shared.messages import Stage, TaskMessage
from shared.nats import Topology
from shared.taskstate.events import EventKind, Snapshot, TaskEvent
from shared.taskstate.status import TaskState, TaskStatus, utc_now
from shared.taskstate.store import TaskStore
from shared.wire import EVENTS_STREAM, task_changes_filter


def step(status: TaskStatus, change, revision: int) -> TaskEvent | None:  # type: ignore[no-untyped-def]
    before = Snapshot.of(status)
    change(status)
    return TaskEvent.between(before, status, revision)


def test_each_kind_of_write_reports_what_changed() -> None:
    status = TaskStatus.new("t1")
    submitted = TaskEvent.between(Snapshot.of(None), status, 1)
    assert submitted is not None and submitted.kind == EventKind.STATE
    assert (submitted.state, submitted.previous_state, submitted.event_id) == ("PENDING", None, "t1.1")

    taken = step(status, lambda s: s.start_stage(Stage.FETCH, "w"), 2)
    assert taken is not None and taken.kind == EventKind.STATE
    assert (taken.previous_state, taken.state, taken.stage, taken.stage_state) == (
        "PENDING", "RECEIVED", Stage.FETCH, "STARTED",
    )  # fmt: skip
    assert taken.previous_stage_state == "PENDING" and taken.attempts == 1

    retried = step(status, lambda s: s.retry_stage(Stage.FETCH, "HTTP 503", 1.0), 3)
    assert retried is not None and retried.kind == EventKind.RETRY and retried.error == "HTTP 503"
    again = step(status, lambda s: s.start_stage(Stage.FETCH, "w"), 4)
    assert again is not None and again.kind == EventKind.STAGE and again.attempts == 2

    # The classifier's start also records the fetch's end: the event names the stage that started.
    fetched = step(status, lambda s: s.start_stage(Stage.CLASSIFY, "w", TaskMessage.model_construct()), 5)
    assert fetched is not None and fetched.kind == EventKind.STATE and fetched.state == "STARTED"
    assert (fetched.stage, fetched.stage_state, fetched.previous_stage_state) == (Stage.CLASSIFY, "STARTED", "PENDING")

    moved = step(status, lambda s: s.report_progress(Stage.UPSCALE, 0.5), 6)
    assert moved is not None and moved.kind == EventKind.PROGRESS and moved.stage is None
    assert step(status, lambda s: s.report_progress(Stage.UPSCALE, 0.5), 7) is None  # nothing moved

    done = step(status, lambda s: s.succeed({"output_url": "s3://b/o.png"}), 8)
    assert done is not None and done.terminal and done.result == {"output_url": "s3://b/o.png"}
    assert json.loads(done.to_json())["kind"] == "state"


async def changes(topology: Topology, task_id: str, count: int) -> list[Msg]:
    """The task's change events in stream order (replayed by an ordered consumer, bounded wait)."""
    sub = await topology.js.subscribe(task_changes_filter(task_id), stream=EVENTS_STREAM, ordered_consumer=True)
    try:
        return [await sub.next_msg(timeout=5) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_the_store_publishes_one_event_per_change_with_revision_ids(topology: Topology) -> None:
    store = TaskStore.of(topology)
    legacy = await topology.nc.subscribe("task.events.>")
    await store.create(TaskStatus.new("ev"))
    await store.update("ev", lambda s: s.start_stage(Stage.FETCH, "w"))
    await store.update("ev", lambda s: s.report_progress(Stage.FETCH, 0.5))
    await store.update("ev", lambda s: s.start_stage(Stage.CLASSIFY, "w"))
    await store.update("ev", lambda s: s.fail("broken", Stage.CLASSIFY))

    msgs = await changes(topology, "ev", 5)
    events = [TaskEvent.from_json(m.data) for m in msgs]
    assert [(e.kind, e.state) for e in events] == [
        (EventKind.STATE, TaskState.PENDING),
        (EventKind.STATE, TaskState.RECEIVED),
        (EventKind.PROGRESS, TaskState.RECEIVED),
        (EventKind.STATE, TaskState.STARTED),
        (EventKind.STATE, TaskState.FAILURE),
    ]
    assert [e.revision for e in events] == sorted(e.revision for e in events)
    assert [m.subject for m in msgs][-1] == "task.changes.ev.state"
    assert all(m.headers and m.headers["Nats-Msg-Id"] == e.event_id for m, e in zip(msgs, events, strict=True))
    assert events[-1].error == "broken" and events[-1].stage == Stage.CLASSIFY

    # Older subscribers still get the one terminal event with the whole status, and only that.
    terminal = await legacy.next_msg(timeout=5)
    assert terminal.subject == "task.events.image_super_resolution_pipeline.failure"
    assert json.loads(terminal.data)["task_id"] == "ev"
    with pytest.raises(TimeoutError):  # bounded: nothing else comes on the terminal subjects
        await legacy.next_msg(timeout=0.3)


async def test_a_republished_terminal_event_is_not_stored_twice(topology: Topology) -> None:
    store = TaskStore.of(topology)
    await store.create(TaskStatus.new("once"))
    await store.update("once", lambda s: s.succeed({"ok": True}))
    before = (await topology.js.stream_info(EVENTS_STREAM)).state.messages

    # What a redelivered message does when it finds the task ended: the stored events say nothing is missing.
    assert not await store.ensure_event("once", max_age_s=3600)

    assert (await topology.js.stream_info(EVENTS_STREAM)).state.messages == before
    events = [TaskEvent.from_json(m.data) for m in await changes(topology, "once", 2)]
    assert [e.state for e in events] == ["PENDING", "SUCCESS"] and events[1].result == {"ok": True}


async def ended_without_events(topology: Topology, task_id: str, completed_at: str | None = None) -> None:
    """A task whose writer died between its terminal state write and the publishes (written to KV directly)."""
    store = TaskStore.of(topology)
    if await store.get(task_id) is None:
        await store.create(TaskStatus.new(task_id))
    entry = await topology.tasks.get(task_id)
    status = TaskStatus.from_json(entry.value or b"")
    status.succeed({"ok": True})
    if completed_at is not None:
        status.completed_at = completed_at
    await topology.tasks.update(task_id, status.to_json(), last=entry.revision)


async def stored_terminal_events(topology: Topology) -> int:
    """Terminal events stored in the events stream (each test has its own server: all are its tasks')."""
    info = await topology.js.stream_info(EVENTS_STREAM, subjects_filter="task.events.>")
    return sum((info.state.subjects or {}).values())


async def test_an_ended_task_without_its_events_gets_them_once(topology: Topology) -> None:
    await ended_without_events(topology, "orphan")
    store = TaskStore.of(topology)

    assert await store.ensure_event("orphan", max_age_s=3600)
    assert not await store.ensure_event("orphan", max_age_s=3600)  # the second finder sees them stored

    assert await stored_terminal_events(topology) == 1
    changes_seen = [TaskEvent.from_json(m.data) for m in await changes(topology, "orphan", 2)]
    assert [e.state for e in changes_seen] == ["PENDING", "SUCCESS"] and changes_seen[1].previous_state is None


async def test_events_are_restored_after_the_duplicate_window_too(topology: Topology) -> None:
    """The stream, not the clock, decides: a task found long after it ended (past the 120 s duplicate
    window) still gets its events, and one whose events are stored gets none again."""
    ten_minutes_ago = utc_now(-600)
    await ended_without_events(topology, "late", completed_at=ten_minutes_ago)
    store = TaskStore.of(topology)
    assert await store.ensure_event("late", max_age_s=3600)
    assert not await store.ensure_event("late", max_age_s=3600)
    assert await stored_terminal_events(topology) == 1

    await ended_without_events(topology, "expired", completed_at=ten_minutes_ago)
    assert not await store.ensure_event("expired", max_age_s=60)  # older than the stream keeps events

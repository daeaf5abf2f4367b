"""Ending a task from outside the pipeline: the purge of its queued message spares a new run's, on a real server."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.errors import NotFoundError

from shared.messages import Stage, TaskMessage, UpscaleOptions
from shared.nats import Topology
from shared.runtime.deadletters import start_new_run
from shared.taskstate.lifecycle import end_task, purge_queued, queued_at
from shared.taskstate.status import TaskState, TaskStatus
from shared.taskstate.store import TaskStore
from shared.wire import enqueue, message_id, task_work_filter, work_stream

PRIORITY = 4


async def queued_runs(topology: Topology, task_id: str) -> list[str]:
    """The message ids of the task's work messages still stored, oldest first."""
    stream, subject = work_stream(PRIORITY), task_work_filter(PRIORITY, task_id)
    ids: list[str] = []
    seq = 1
    while True:
        try:
            raw = await topology.js.get_msg(stream, seq=seq, next=True, subject=subject)
        except NotFoundError:
            return ids
        ids.append((raw.headers or {}).get("Nats-Msg-Id", ""))
        seq = (raw.seq or seq) + 1


async def queue_task(topology: Topology, task_id: str) -> TaskStore:
    """A task created as the API does, with its first stage's message queued (run 1)."""
    store = TaskStore.of(topology)
    status = TaskStatus.new(task_id, priority=PRIORITY, input_url="http://x/in.png", output_url="s3://b/out.png")
    await store.create(status)
    await enqueue(topology.js, first_message(status), Stage.FETCH, status.run)
    return store


def first_message(status: TaskStatus) -> TaskMessage:
    return TaskMessage.first(status, UpscaleOptions.model_validate(status.kwargs), None)


async def test_the_purge_removes_the_messages_up_to_the_one_read_and_keeps_later_ones(topology: Topology) -> None:
    store = await queue_task(topology, "bounded")
    status = await store.get("bounded")
    assert status is not None
    found = await queued_at(topology, status)
    assert found is not None and found.stage == Stage.FETCH and found.seq > 0
    # Stored after the read: a new run's first message.
    await enqueue(topology.js, first_message(status), Stage.FETCH, 2)
    await purge_queued(topology, status, through=found)
    assert await queued_runs(topology, "bounded") == [message_id("bounded", Stage.FETCH, 2)]
    await purge_queued(topology, status)  # unbounded (DELETE): every one goes
    assert await queued_runs(topology, "bounded") == []


async def test_a_retry_while_the_ender_stalls_before_its_purge_keeps_the_new_run_queued(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await queue_task(topology, "stalled")
    purge = topology.js.purge_stream

    async def retried_first(*args: Any, **kwargs: Any) -> bool:
        # The ender stalls between its terminal write and its purge; a client retries the task meanwhile.
        monkeypatch.setattr(topology.js, "purge_stream", purge)
        reopened = await start_new_run(topology.js, store, "stalled", of_run=1)
        assert reopened.run == 2 and reopened.state == TaskState.PENDING
        return await purge(*args, **kwargs)

    monkeypatch.setattr(topology.js, "purge_stream", retried_first)
    ended = await end_task(topology, store, "stalled", TaskState.REVOKED, "revoked by client")
    assert ended is not None and ended.state == TaskState.REVOKED and ended.run == 1
    status = await store.get("stalled")
    assert status is not None and status.state == TaskState.PENDING and status.run == 2
    assert await queued_runs(topology, "stalled") == [message_id("stalled", Stage.FETCH, 2)]


async def test_ending_a_task_with_nothing_queued_purges_nothing(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TaskStore.of(topology)
    status = TaskStatus.new("unqueued", priority=PRIORITY, input_url="http://x/in.png", output_url="s3://b/out.png")
    await store.create(status)

    async def no_purge(*args: Any, **kwargs: Any) -> bool:
        raise AssertionError("nothing was queued: nothing to purge")

    monkeypatch.setattr(topology.js, "purge_stream", no_purge)
    ended = await end_task(topology, store, "unqueued", TaskState.REVOKED, "revoked by client")
    assert ended is not None and ended.state == TaskState.REVOKED

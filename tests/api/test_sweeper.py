"""The sweeper finishes what a killed writer left undone, on a real NATS server.

A task whose last writer died after its terminal state write still has a message in a work queue
(never acknowledged). When the sweeper meets that message it publishes the missing terminal event,
removes the task's objects and deletes the message: GET, the events stream, the metrics (counted from
that stream) and the object store agree again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.js.errors import ObjectNotFoundError

from services.api.metrics import ApiMetrics
from services.api.sweeper import Sweeper
from shared.blobs import write_blob
from shared.config import Settings
from shared.messages import Stage, TaskMessage
from shared.nats import Topology, connect, declare
from shared.taskstate.status import TaskStatus
from shared.taskstate.store import TaskStore
from shared.wire import input_object, output_object, work_subject
from tests.servers import NatsServer
from tests.shared.test_events import ended_without_events, stored_terminal_events
from tests.system import queued_messages

QUEUE_TIMEOUT_S = 0.05


@pytest.fixture
def settings(own_nats: NatsServer) -> Settings:
    return Settings(nats_url=own_nats.url, queue_timeout_s=QUEUE_TIMEOUT_S)


@pytest.fixture
async def topology(settings: Settings) -> AsyncIterator[Topology]:
    nc = await connect(settings, name="test")
    yield await declare(nc, settings)
    await nc.close()


async def left_at_upload(topology: Topology, task_id: str) -> None:
    """A task queued for upload, with its objects stored."""
    message = TaskMessage(task_id=task_id, input_url="i", output_url="o", submitted_at="t")
    await topology.js.publish(work_subject(5, Stage.UPLOAD, task_id), message.pack())
    for name in (input_object(task_id), output_object(task_id)):
        await write_blob(topology.blobs, name, b"bytes")


async def objects_left(topology: Topology, task_id: str) -> list[str]:
    left = []
    for name in (input_object(task_id), output_object(task_id)):
        try:
            await topology.blobs.get_info(name)
            left.append(name)
        except ObjectNotFoundError:
            pass
    return left


async def overdue() -> None:
    await asyncio.sleep(QUEUE_TIMEOUT_S * 2)  # the queue timeout is a span of time: let it pass


async def test_an_ended_task_left_in_a_queue_gets_its_event_and_loses_its_objects(
    topology: Topology, settings: Settings, own_nats: NatsServer
) -> None:
    metrics = ApiMetrics()
    await metrics.follow_events(topology.nc)
    await TaskStore.of(topology).create(TaskStatus.new("orphan"))
    await left_at_upload(topology, "orphan")
    await ended_without_events(topology, "orphan")  # the uploader was killed right after SUCCESS
    await overdue()

    sweeper = Sweeper(topology, settings, holder="test")
    await sweeper.sweep()
    await sweeper.sweep()  # a second pass finds nothing left to do

    assert sweeper.events_restored == 1
    assert await stored_terminal_events(topology) == 1
    assert await objects_left(topology, "orphan") == []
    assert await queued_messages(own_nats.url) == 0
    counted = metrics.completed.labels("image_super_resolution_pipeline", "success")
    async with asyncio.timeout(5):
        while counted._value.get() < 1:  # the ordered consumer delivers asynchronously
            await asyncio.sleep(0.01)
    assert counted._value.get() == 1
    await metrics.stop()


async def test_a_deleted_task_left_in_a_queue_loses_its_objects_and_its_message(
    topology: Topology, settings: Settings, own_nats: NatsServer
) -> None:
    await left_at_upload(topology, "deleted")  # no state: DELETE removed it while its writer was dying
    await overdue()

    sweeper = Sweeper(topology, settings, holder="test")
    await sweeper.sweep()

    assert sweeper.events_restored == 0
    assert await stored_terminal_events(topology) == 0
    assert await objects_left(topology, "deleted") == []
    assert await queued_messages(own_nats.url) == 0


async def test_metrics_count_an_event_published_twice_once(topology: Topology) -> None:
    """A terminal event published again under its message id (a restored event racing its late
    writer) is stored once, and the metrics, read from the stream, count it once."""
    metrics = ApiMetrics()
    await metrics.follow_events(topology.nc)
    store = TaskStore.of(topology)
    await store.create(TaskStatus.new("twice"))
    ended = await store.update("twice", lambda s: s.fail("boom"))
    await store.publish_event(ended)  # the same event again (same Nats-Msg-Id)
    await store.create(TaskStatus.new("later"))
    await store.update("later", lambda s: s.succeed({}))

    successes = metrics.completed.labels("image_super_resolution_pipeline", "success")
    async with asyncio.timeout(5):  # events arrive in stream order: "later" comes after any copy of "twice"
        while successes._value.get() < 1:
            await asyncio.sleep(0.01)
    assert metrics.completed.labels("image_super_resolution_pipeline", "failure")._value.get() == 1
    await metrics.stop()

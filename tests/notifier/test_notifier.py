"""The notifier's runner on a real nats-server: its consumer comes with the topology, an event is
delivered and acknowledged, and a delivery still running when the shutdown grace period ends is handed
back at once (not left for its ack wait)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from services.notifier.worker import Notifier
from shared.config import Settings
from shared.egress.netguard import AddressPolicy
from shared.egress.transport import guarded_client
from shared.nats import Topology, connect, declare
from shared.taskstate.status import TaskState, TaskStatus
from shared.taskstate.store import TaskStore
from shared.wire import EVENTS_STREAM, EVENTS_SUBJECTS, NOTIFIER_CONSUMER
from tests.notifier.receiver import Receiver
from tests.servers import NatsServer


@pytest.fixture
def settings(own_nats: NatsServer) -> Settings:
    return Settings(nats_url=own_nats.url, concurrency=2, webhook_timeout_s=30, shutdown_grace_s=0.3)


@pytest.fixture
async def topology(settings: Settings) -> AsyncIterator[Topology]:
    nc = await connect(settings, name="test")
    yield await declare(nc, settings)
    await nc.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with guarded_client(AddressPolicy(allow_private=True), role="callback", timeout=httpx.Timeout(30)) as client:
        yield client


async def end_task(topology: Topology, callback_url: str | None) -> str:
    task_id = uuid.uuid4().hex
    status = TaskStatus.new(task_id, kwargs={"callback_url": callback_url} if callback_url else {})
    status.end(TaskState.REVOKED, "revoked by client")
    await TaskStore.of(topology).publish_event(status)
    return task_id


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)  # counters change with no event to await


async def test_the_topology_declares_the_notifiers_consumer(topology: Topology, settings: Settings) -> None:
    info = await topology.js.consumer_info(EVENTS_STREAM, NOTIFIER_CONSUMER)
    assert info.config.filter_subject == EVENTS_SUBJECTS
    assert info.config.ack_wait == settings.webhook_timeout_s * 2 + 5


async def test_an_event_is_delivered_and_acknowledged(
    topology: Topology, settings: Settings, http: httpx.AsyncClient
) -> None:
    receiver = Receiver()
    notifier = Notifier(topology, settings, http)
    running = asyncio.create_task(notifier.run())
    try:
        task_id = await end_task(topology, receiver.url("/hook"))
        await end_task(topology, None)
        got = await receiver.next(10)
        await until(lambda: notifier.counters.delivered == 1 and notifier.counters.skipped == 1)
    finally:
        notifier.stop()
        await asyncio.wait_for(running, timeout=10)
        receiver.stop()
    assert TaskStatus.model_validate_json(got.body).task_id == task_id
    info = await topology.js.consumer_info(EVENTS_STREAM, NOTIFIER_CONSUMER)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_a_delivery_running_past_the_grace_period_is_handed_back(
    topology: Topology, settings: Settings, http: httpx.AsyncClient
) -> None:
    notifier = Notifier(topology, settings, http)
    with socket.socket() as silent:  # listening, never accepting: the request goes out, no answer comes
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        running = asyncio.create_task(notifier.run())
        await end_task(topology, f"http://127.0.0.1:{silent.getsockname()[1]}/hook")
        await until(lambda: bool(notifier.in_flight))
        notifier.stop()
        await asyncio.wait_for(running, timeout=10)  # not the 30 s delivery deadline
    assert notifier.counters.handed_back == 1 and notifier.counters.retried == 0
    again = await topology.js.pull_subscribe_bind(durable=NOTIFIER_CONSUMER, stream=EVENTS_STREAM)
    [msg] = await again.fetch(batch=1, timeout=5)  # at once, not after its ack wait (65 s)
    assert msg.metadata.num_delivered == 2

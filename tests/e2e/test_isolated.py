"""Scenarios that need their own NATS server: priority ordering at every stage, DELETE of a
queued task, and health while NATS is down."""

from __future__ import annotations

import asyncio

import httpx
import nats
import pytest
from nats.aio.msg import Msg
from nats.js.errors import NoKeysError

from shared.messages import Stage
from shared.wire import TASKS_BUCKET, queued_filter, work_stream
from tests.e2e.images import photo
from tests.servers import NatsServer, StaticHTTPServer
from tests.system import System, wait_terminal

TASK = "image_super_resolution_pipeline"


async def submit_many(api: httpx.AsyncClient, source: str, bucket: str, priority: int, count: int) -> list[str]:
    ids = []
    for n in range(count):
        response = await api.post(
            "/api/v1/tasks",
            json={"task_name": TASK, "args": [source, f"s3://{bucket}/p{priority}-{n}.png"], "priority": priority},
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["task_id"])
    return ids


class QueueWatch:
    """The tasks whose message reached one stage's queue since the watch began (the workers' doorbell:
    the work streams' republished copies); enter it before the tasks can get there."""

    def __init__(self, nats_url: str, stage: Stage) -> None:
        self.nats_url, self.stage = nats_url, stage
        self.arrived: set[str] = set()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> QueueWatch:
        self._nc = await nats.connect(self.nats_url)
        await self._nc.subscribe(queued_filter(self.stage), cb=self._on_queued)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._nc.close()

    async def _on_queued(self, msg: Msg) -> None:
        self.arrived.add(msg.subject.rsplit(".", 1)[-1])
        self._changed.set()

    async def wait(self, task_ids: list[str], timeout_s: float = 60) -> None:
        async with asyncio.timeout(timeout_s):
            while not set(task_ids) <= self.arrived:
                self._changed.clear()
                await self._changed.wait()


async def test_high_priority_overtakes_a_backlog_at_the_first_stage(
    own_system: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    source = http_server.add("prio.png", photo(size=(24, 24)))
    await own_system.start("api")
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        low = await submit_many(api, source, s3_bucket, priority=1, count=8)
        high = await submit_many(api, source, s3_bucket, priority=9, count=1)
    await own_system.start("fetcher", "classifier", "upscaler", "uploader")

    finals = await wait_terminal(own_system.nats_url, low + high, timeout_s=120)
    order = sorted(finals, key=lambda task_id: finals[task_id]["completed_at"])
    assert {f["state"] for f in finals.values()} == {"SUCCESS"}
    assert order[0] == high[0], [finals[t]["priority"] for t in order]


async def test_high_priority_overtakes_a_backlog_at_the_upscale_stage(
    own_system: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    source = http_server.add("prio2.png", photo(size=(24, 24)))
    await own_system.start("api", "fetcher", "classifier")
    async with (
        httpx.AsyncClient(base_url=own_system.api_url) as api,
        QueueWatch(own_system.nats_url, Stage.UPSCALE) as q,
    ):
        low = await submit_many(api, source, s3_bucket, priority=2, count=6)
        await q.wait(low)  # all six wait for an upscaler
        high = await submit_many(api, source, s3_bucket, priority=8, count=1)
        await q.wait(high)
    await own_system.start("upscaler", "uploader")

    finals = await wait_terminal(own_system.nats_url, low + high, timeout_s=120)
    order = sorted(finals, key=lambda task_id: finals[task_id]["completed_at"])
    assert order[0] == high[0], [finals[t]["priority"] for t in order]


async def test_delete_removes_a_queued_message(own_system: System, s3_bucket: str) -> None:
    await own_system.start("api")  # no workers: the task stays queued
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        response = await api.post(
            "/api/v1/tasks",
            json={"task_name": TASK, "args": ["https://example.com/a.png", f"s3://{s3_bucket}/a.png"], "priority": 4},
        )
        task_id = response.json()["task_id"]
        nc = await nats.connect(own_system.nats_url)
        try:
            js = nc.jetstream()
            assert (await js.stream_info(work_stream(4))).state.messages == 1
            assert (await api.delete(f"/api/v1/tasks/{task_id}")).status_code == 200
            assert (await js.stream_info(work_stream(4))).state.messages == 0
        finally:
            await nc.close()
        assert (await api.get(f"/api/v1/tasks/{task_id}")).status_code == 404


async def test_health_is_503_while_nats_is_down(own_system: System, own_nats: NatsServer) -> None:
    await own_system.start("api")
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        assert (await api.get("/health")).status_code == 200
        own_nats.stop()
        response = await api.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "unhealthy"
        own_nats.restart()
        async with asyncio.timeout(20):  # the client reconnects by itself
            while (await api.get("/health")).status_code != 200:
                await asyncio.sleep(0.1)


async def test_submission_while_nats_is_down_is_503_and_queues_nothing(
    own_system: System, own_nats: NatsServer
) -> None:
    await own_system.start("api")
    async with httpx.AsyncClient(base_url=own_system.api_url, timeout=30) as api:
        own_nats.stop()
        response = await api.post(
            "/api/v1/tasks", json={"task_name": TASK, "args": ["https://example.com/a.png", "s3://bucket/a.png"]}
        )
        assert response.status_code == 503
        assert response.json()["detail"] == "task queue unavailable, retry later"
        own_nats.restart()
        async with asyncio.timeout(20):
            while (await api.get("/health")).status_code != 200:
                await asyncio.sleep(0.1)
    nc = await nats.connect(own_system.nats_url)
    try:
        kv = await nc.jetstream().key_value(TASKS_BUCKET)
        with pytest.raises(NoKeysError):
            await kv.keys()  # the entry written before the failure was removed again
    finally:
        await nc.close()

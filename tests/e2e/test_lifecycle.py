"""Ending tasks early and exactly once: queue timeout, revoke, DELETE of a running task, idempotency."""

from __future__ import annotations

import asyncio
import json

import httpx
import nats
import pytest

from shared.messages import Stage
from shared.wire import TASKS_BUCKET
from tests.e2e.images import photo
from tests.e2e.test_isolated import QueueWatch, submit_many
from tests.servers import S3Server, StaticHTTPServer
from tests.system import System, queued_messages, wait_terminal

TASK = "image_super_resolution_pipeline"


async def wait_for_state(nats_url: str, task_id: str, predicate, timeout_s: float = 60) -> dict:
    """Watch one task's KV entry until `predicate(status)` holds."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(TASKS_BUCKET)
        watcher = await kv.watch(task_id)
        async with asyncio.timeout(timeout_s):
            async for entry in watcher:
                if entry is not None and entry.value and predicate(status := json.loads(entry.value)):
                    await watcher.stop()
                    return status
        raise AssertionError("watch ended")
    finally:
        await nc.close()


@pytest.mark.system_env(TM_QUEUE_TIMEOUT_S="1")
async def test_a_task_nobody_takes_times_out_and_leaves_its_queue(own_system: System, s3_bucket: str) -> None:
    await own_system.start("api")  # no fetcher running
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        response = await api.post(
            "/api/v1/tasks", json={"task_name": TASK, "args": ["https://example.com/a.png", f"s3://{s3_bucket}/a.png"]}
        )
        task_id = response.json()["task_id"]
        final = (await wait_terminal(own_system.nats_url, [task_id], timeout_s=20))[task_id]
        assert final["state"] == "TIMEOUT"
        assert final["error"] == "waited more than 1 s in the fetch queue"
        assert (await api.get(f"/api/v1/tasks/{task_id}")).json()["state"] == "TIMEOUT"
    assert await queued_messages(own_system.nats_url) == 0


@pytest.mark.system_env(TM_QUEUE_TIMEOUT_S="2")
async def test_each_stage_wait_counts_a_missing_upscaler_times_tasks_out(
    own_system: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    source = http_server.add("timeout-later.png", photo(size=(16, 16)))
    await own_system.start("api", "fetcher", "classifier")  # nobody upscales
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        ids = await submit_many(api, source, s3_bucket, priority=5, count=3)
    finals = await wait_terminal(own_system.nats_url, ids, timeout_s=30)
    assert {f["state"] for f in finals.values()} == {"TIMEOUT"}
    assert {f["error"] for f in finals.values()} == {"waited more than 2 s in the upscale queue"}
    # The stages before the queue it waited in are recorded done (the message there proves it).
    assert all([s["state"] for s in f["subtasks"]][:3] == ["SUCCESS", "SUCCESS", "PENDING"] for f in finals.values())
    assert await queued_messages(own_system.nats_url) == 0


async def test_revoke_a_queued_task(own_system: System, s3_bucket: str) -> None:
    await own_system.start("api")
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        response = await api.post(
            "/api/v1/tasks", json={"task_name": TASK, "args": ["https://example.com/a.png", f"s3://{s3_bucket}/a.png"]}
        )
        task_id = response.json()["task_id"]
        revoked = await api.post(f"/api/v1/tasks/{task_id}/revoke")
        assert revoked.status_code == 200
        assert revoked.json()["state"] == "REVOKED" and revoked.json()["completed_at"]
        again = await api.post(f"/api/v1/tasks/{task_id}/revoke")
        assert again.status_code == 409 and "REVOKED" in again.json()["detail"]
        assert (await api.post("/api/v1/tasks/00000000-0000-0000-0000-000000000000/revoke")).status_code == 404
    assert await queued_messages(own_system.nats_url) == 0
    event = (await wait_terminal(own_system.nats_url, [task_id], timeout_s=10))[task_id]
    assert event["state"] == "REVOKED"


@pytest.mark.system_env(TM_TILE="32")
async def test_revoke_stops_a_running_upscale_between_tiles(
    own_system: System, http_server: StaticHTTPServer, s3_server: S3Server, s3_bucket: str
) -> None:
    source = http_server.add("revoke-big.png", photo("astronaut.png", (256, 256)))
    await own_system.start("api", "fetcher", "classifier", "upscaler", "uploader")
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        response = await api.post(
            "/api/v1/tasks",
            json={
                "task_name": TASK,
                "args": [source, f"s3://{s3_bucket}/revoked.png"],
                "kwargs": {"model": "realesr-animevideov3"},
            },
        )
        task_id = response.json()["task_id"]
        # Revoke once the upscaler has reported progress inside the stage (tiles are running).
        await wait_for_state(own_system.nats_url, task_id, lambda s: 0.2 < s["progress"] < 0.85)
        assert (await api.post(f"/api/v1/tasks/{task_id}/revoke")).status_code == 200
    final = (await wait_terminal(own_system.nats_url, [task_id], timeout_s=30))[task_id]
    assert final["state"] == "REVOKED"
    await wait_stage_done_or_dropped(own_system)
    with pytest.raises(s3_server.client().exceptions.NoSuchKey):
        s3_server.client().get_object(Bucket=s3_bucket, Key="revoked.png")
    assert await queued_messages(own_system.nats_url) == 0


async def wait_stage_done_or_dropped(system: System, timeout_s: float = 30) -> None:
    """Until the upscaler has let go of the revoked task (its log says it dropped it)."""
    log = system.log_dir / "upscaler.log"
    async with asyncio.timeout(timeout_s):
        while '"outcome": "dropped"' not in log.read_text():
            await asyncio.sleep(0.1)  # a log line is the only signal the worker gives


async def test_delete_of_a_running_task_revokes_it_first(
    own_system: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    source = http_server.add("delete-running.png", photo(size=(16, 16)))
    await own_system.start("api", "fetcher", "classifier")  # it will wait at the upscale stage
    async with (
        httpx.AsyncClient(base_url=own_system.api_url) as api,
        QueueWatch(own_system.nats_url, Stage.UPSCALE) as q,
    ):
        [task_id] = await submit_many(api, source, s3_bucket, priority=3, count=1)
        await q.wait([task_id])
        assert (await api.delete(f"/api/v1/tasks/{task_id}")).status_code == 200
        assert (await api.get(f"/api/v1/tasks/{task_id}")).status_code == 404
    event = (await wait_terminal(own_system.nats_url, [task_id], timeout_s=10))[task_id]
    assert event["state"] == "REVOKED" and event["error"] == "deleted by client"
    assert await queued_messages(own_system.nats_url) == 0


async def test_revoking_a_task_waiting_in_a_later_queue_records_the_stages_before_it_done(
    own_system: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    # The classifier's end is written by the upscaler's start, which never comes: the revoke records it.
    source = http_server.add("revoke-later.png", photo(size=(16, 16)))
    await own_system.start("api", "fetcher", "classifier")
    async with (
        httpx.AsyncClient(base_url=own_system.api_url) as api,
        QueueWatch(own_system.nats_url, Stage.UPSCALE) as q,
    ):
        [task_id] = await submit_many(api, source, s3_bucket, priority=6, count=1)
        await q.wait([task_id])
        revoked = await api.post(f"/api/v1/tasks/{task_id}/revoke")
        assert revoked.status_code == 200
        assert [s["state"] for s in revoked.json()["subtasks"]] == ["SUCCESS", "SUCCESS", "PENDING", "PENDING"]
    assert await queued_messages(own_system.nats_url) == 0


async def test_idempotency_key_returns_the_same_task(own_system: System, s3_bucket: str) -> None:
    await own_system.start("api")
    body = {"task_name": TASK, "args": ["https://example.com/a.png", f"s3://{s3_bucket}/a.png"], "priority": 2}
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        headers = {"Idempotency-Key": "order-1234"}
        first, second = await asyncio.gather(
            api.post("/api/v1/tasks", json=body, headers=headers),
            api.post("/api/v1/tasks", json=body, headers=headers),
        )
        assert first.status_code == second.status_code == 202
        assert first.json()["task_id"] == second.json()["task_id"]
        other = await api.post("/api/v1/tasks", json={**body, "priority": 9}, headers=headers)
        assert other.status_code == 409
        fresh = await api.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "order-5678"})
        assert fresh.json()["task_id"] != first.json()["task_id"]
    assert await queued_messages(own_system.nats_url) == 2


@pytest.mark.system_env(TM_ACK_WAIT_S="1", TM_MAX_RETRIES="0")
async def test_a_message_that_kills_every_worker_is_dead_lettered(own_system: System, s3_bucket: str) -> None:
    """A worker that takes the message and dies (never acks) each time: after the last delivery
    JetStream gives up, and the sweeper fails the task and keeps the message as a dead letter."""
    from shared.messages import Stage
    from shared.runtime.deadletters import list_dead
    from shared.runtime.puller import PriorityPuller

    await own_system.start("api")
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        response = await api.post(
            "/api/v1/tasks", json={"task_name": TASK, "args": ["https://example.com/a.png", f"s3://{s3_bucket}/a.png"]}
        )
        task_id = response.json()["task_id"]
    nc = await nats.connect(own_system.nats_url)
    try:
        puller = PriorityPuller(nc, Stage.FETCH, rescan_s=0.2)
        await puller.start()
        for delivery in (1, 2, 3):  # max deliveries = TM_MAX_RETRIES + 3
            msg = await asyncio.wait_for(puller.next(), timeout=10)
            assert msg is not None and msg.metadata.num_delivered == delivery  # taken, then "crash"
        # Workers keep asking for work; JetStream decides on a 4th delivery only when asked.
        asking = asyncio.create_task(puller.next())
        final = (await wait_terminal(own_system.nats_url, [task_id], timeout_s=20))[task_id]
        assert not asking.done()  # no 4th delivery
        await puller.close()
        # An empty answer to a pull in flight may take its request timeout (5 s) on a loaded machine.
        assert await asyncio.wait_for(asking, timeout=15) is None
        assert final["state"] == "FAILURE"
        assert final["error"] == "fetch: delivered 3 times without completing (workers crashed or hung)"
        # The sweeper records FAILURE (the event awaited above) before it writes the dead letter.
        async with asyncio.timeout(5):
            while not (found := [d for d in await list_dead(nc.jetstream()) if d.task_id == task_id]):
                await asyncio.sleep(0.05)
        [dead] = found
        assert dead.attempts == 3 and dead.origin_subject == f"tm.work.p5.fetch.{task_id}"
    finally:
        await nc.close()
    assert await queued_messages(own_system.nats_url) == 0

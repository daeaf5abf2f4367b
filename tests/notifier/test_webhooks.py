"""The notifier on the whole system: a task's final status reaches its callback_url, signed, once,
a receiver that fails first still gets it (retried with backoff), one that refuses it for good is
not retried, and the task's status tells which (`callback`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import httpx
import nats
import pytest

from services.notifier.delivery import H_EVENT_ID, H_SIGNATURE, H_TIMESTAMP, verify
from shared.wire import EVENTS_STREAM, NOTIFIER_CONSUMER
from tests.e2e.images import photo
from tests.notifier.receiver import Receiver
from tests.servers import StaticHTTPServer
from tests.system import NOTIFIER, System, wait_terminal

TASK = "image_super_resolution_pipeline"
SECRET = "webhook-test-secret"


@pytest.fixture(scope="module")
def notifier(system: System) -> Iterator[System]:
    asyncio.run(system.start(NOTIFIER, TM_WEBHOOK_SECRET=SECRET, TM_WEBHOOK_RETRY_BASE_S="0.2"))
    yield system
    system.stop(NOTIFIER)


async def submit(system: System, http_server: StaticHTTPServer, bucket: str, callback_url: str) -> str:
    source = http_server.add(f"{uuid.uuid4().hex}.png", photo(size=(24, 24)))
    body = {"task_name": TASK, "args": [source, f"s3://{bucket}/{uuid.uuid4().hex}.png"], "callback_url": callback_url}
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as api:
        response = await api.post("/api/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


async def callback_of(system: System, task_id: str, timeout_s: float = 15) -> dict:
    """The task's `callback` record once it is final (it is written just after the event is answered)."""
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as api, asyncio.timeout(timeout_s):
        while True:
            response = await api.get(f"/api/v1/tasks/{task_id}")
            assert response.status_code == 200, response.text
            record = response.json()["callback"]
            if record is not None and record["state"] != "retrying":
                return record
            await asyncio.sleep(0.1)  # a KV write the API does not announce


async def settled(system: System, timeout_s: float = 30) -> None:
    """Until the notifier holds no unacknowledged event (every delivery answered for good)."""
    nc = await nats.connect(system.nats_url)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                info = await nc.jetstream().consumer_info(EVENTS_STREAM, NOTIFIER_CONSUMER)
                if not info.num_ack_pending and not info.num_pending:
                    return
                await asyncio.sleep(0.1)  # acks come with no event a client can await
    finally:
        await nc.close()


async def test_the_final_status_arrives_once_and_signed(
    notifier: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    receiver = Receiver()
    try:
        task_id = await submit(notifier, http_server, s3_bucket, receiver.url("/hooks/once"))
        got = await receiver.next(120)
        await settled(notifier)
        assert receiver.hits["/hooks/once"] == 1, notifier.logs()
    finally:
        receiver.stop()
    status = json.loads(got.body)
    assert (status["task_id"], status["state"]) == (task_id, "SUCCESS")
    assert status["result"]["output_width"] == 96
    assert got.headers[H_EVENT_ID] == f"{task_id}.1.SUCCESS"
    assert verify(SECRET, got.headers[H_TIMESTAMP], got.body, got.headers[H_SIGNATURE])
    record = await callback_of(notifier, task_id)
    assert (record["state"], record["attempts"], record["last_result"]) == ("delivered", 1, "HTTP 200")


async def test_a_receiver_failing_twice_gets_it_on_the_third_try(
    notifier: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    receiver = Receiver()
    receiver.answers = {"/hooks/flaky": {1: 503, 2: 500}}
    try:
        task_id = await submit(notifier, http_server, s3_bucket, receiver.url("/hooks/flaky"))
        attempts = [await receiver.next(120) for _ in range(3)]
        await settled(notifier)
        assert receiver.hits["/hooks/flaky"] == 3
    finally:
        receiver.stop()
    assert [a.answered for a in attempts] == [503, 500, 200]
    assert {a.headers[H_EVENT_ID] for a in attempts} == {f"{task_id}.1.SUCCESS"}  # the same event each time
    record = await callback_of(notifier, task_id)
    assert (record["state"], record["attempts"], record["last_result"]) == ("delivered", 3, "HTTP 200")


async def test_a_receiver_refusing_it_is_not_retried_and_the_status_says_so(
    notifier: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    receiver = Receiver()
    receiver.answers = {"/hooks/gone": {1: 404}}
    try:
        task_id = await submit(notifier, http_server, s3_bucket, receiver.url("/hooks/gone"))
        refused = await receiver.next(120)
        await settled(notifier)
        assert receiver.hits["/hooks/gone"] == 1  # a 404 is an answer no retry changes
    finally:
        receiver.stop()
    assert refused.answered == 404
    record = await callback_of(notifier, task_id)
    assert (record["state"], record["attempts"], record["last_result"]) == ("failed", 1, "HTTP 404")


async def test_a_callback_url_httpx_cannot_send_to_fails_at_once(
    notifier: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    # Passes the API's checks, but httpx refuses to build the request: it used to escape as a traceback
    # every ack_wait, with `callback` never written and no webhook_failed line.
    task_id = await submit(notifier, http_server, s3_bucket, "http://127.0.0.256:18500/o.png")
    await wait_terminal(notifier.nats_url, [task_id], timeout_s=120)
    record = await callback_of(notifier, task_id)
    assert (record["state"], record["attempts"]) == ("failed", 1)
    assert record["last_result"] == "invalid callback URL (Invalid IPv4 address: '127.0.0.256')"
    failed = [line for line in (notifier.log_dir / "notifier.log").read_text().splitlines() if task_id in line]
    assert any('"webhook_failed"' in line for line in failed), failed

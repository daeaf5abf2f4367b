"""POST /api/v1/tasks/{id}/retry through the real pipeline: a failed task runs again (and its dead letter
cannot start a third run), a revoked and a timed-out task run again and succeed. The API-only cases
(409, 404, concurrent retries) are in tests/api/test_retry.py."""

from __future__ import annotations

import asyncio
import io

import httpx
import nats
from PIL import Image

from shared.messages import Stage
from shared.runtime.deadletters import dead_letters_of
from shared.wire import dead_subject
from tests.e2e.images import photo
from tests.e2e.test_dead_letters import dlq
from tests.servers import S3Server, StaticHTTPServer
from tests.sse import collect
from tests.system import STAGE_SERVICES, System, run_ended

TASK = "image_super_resolution_pipeline"


async def submit(api: httpx.AsyncClient, source: str, output: str) -> str:
    response = await api.post("/api/v1/tasks", json={"task_name": TASK, "args": [source, output]})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


async def test_a_failed_task_runs_again_and_its_dead_letter_cannot_start_a_third_run(
    own_system: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    await own_system.start("api", "fetcher")
    nc = await nats.connect(own_system.nats_url)
    try:
        js = nc.jetstream()
        async with httpx.AsyncClient(base_url=own_system.api_url, timeout=30) as api:
            task_id = await submit(api, http_server.url("retry-missing.png"), f"s3://{s3_bucket}/missing.png")
            letters = await js.subscribe(dead_subject(Stage.FETCH, task_id), ordered_consumer=True)
            first = await run_ended(own_system.nats_url, task_id, run=1)
            assert first["state"] == "FAILURE" and "HTTP 404" in first["error"]
            first_letter = (await letters.next_msg(timeout=30)).metadata.sequence.stream

            retried = await api.post(f"/api/v1/tasks/{task_id}/retry")
            assert retried.status_code == 202, retried.text
            assert (retried.json()["run"], retried.json()["state"], retried.json()["error"]) == (2, "PENDING", None)
            # Consumed by the retry (run 2 may have failed, with a letter of its own, by now).
            assert first_letter not in [d.seq for d in await dead_letters_of(js, task_id)]
            replay = dlq(own_system, "replay", str(first_letter))
            assert replay.returncode == 1 and f"no dead letter with seq {first_letter}" in replay.stdout

            # The input is still missing: run 2 fails the same way, with a dead letter of its own.
            second = await run_ended(own_system.nats_url, task_id, run=2)
            assert second["state"] == "FAILURE" and "HTTP 404" in second["error"]
            second_letter = (await letters.next_msg(timeout=30)).metadata.sequence.stream
            assert [d.seq for d in await dead_letters_of(js, task_id)] == [second_letter] != [first_letter]
            final = (await api.get(f"/api/v1/tasks/{task_id}")).json()
            assert (final["state"], final["run"]) == ("FAILURE", 2)
            assert final["subtasks"][0]["state"] == "FAILURE" and final["subtasks"][0]["attempts"] == 1
    finally:
        await nc.close()


async def test_a_revoked_and_a_timed_out_task_run_again_and_succeed(
    own_system: System, http_server: StaticHTTPServer, s3_server: S3Server, s3_bucket: str
) -> None:
    source = http_server.add("retry-later.png", photo(size=(16, 12)))
    await own_system.start("api", TM_QUEUE_TIMEOUT_S="1")  # nothing takes the work yet
    async with httpx.AsyncClient(base_url=own_system.api_url, timeout=30) as api:
        revoked = await submit(api, source, f"s3://{s3_bucket}/revoked.png")
        assert (await api.post(f"/api/v1/tasks/{revoked}/revoke")).status_code == 200
        timed_out = await submit(api, source, f"s3://{s3_bucket}/timed-out.png")
    assert (await run_ended(own_system.nats_url, timed_out, run=1, timeout_s=20))["state"] == "TIMEOUT"

    own_system.stop("api")  # the second run gets the default queue timeout
    await own_system.start("api", *STAGE_SERVICES)
    async with httpx.AsyncClient(base_url=own_system.api_url, timeout=60) as api:
        assert (await api.post(f"/api/v1/tasks/{revoked}/retry")).status_code == 202
        # A follower that opens the stream now sees the first run end, then all of the second.
        async with asyncio.timeout(120), api.stream("GET", f"/api/v1/tasks/{revoked}/events") as response:
            events = [e.data for e in await collect(response) if e.event == "state"]
        assert [(e["run"], e["state"]) for e in events] == [
            (1, "PENDING"), (1, "REVOKED"),
            (2, "PENDING"), (2, "RECEIVED"), (2, "STARTED"), (2, "SUCCESS"),
        ]  # fmt: skip

        retried = await api.post(f"/api/v1/tasks/{timed_out}/retry")
        assert retried.status_code == 202 and retried.json()["run"] == 2, retried.text
        assert (await run_ended(own_system.nats_url, timed_out, run=2))["state"] == "SUCCESS"

        for task_id, name in ((revoked, "revoked.png"), (timed_out, "timed-out.png")):
            final = (await api.get(f"/api/v1/tasks/{task_id}")).json()
            assert (final["state"], final["run"], final["result"]["output_width"]) == ("SUCCESS", 2, 64)
            written = s3_server.client().get_object(Bucket=s3_bucket, Key=name)["Body"].read()
            assert Image.open(io.BytesIO(written)).size == (64, 48)
            again = await api.post(f"/api/v1/tasks/{task_id}/retry")
            assert again.status_code == 409 and "is SUCCESS (run 2)" in again.json()["detail"]

"""Rate limits (per-client token buckets) and backpressure (queue depth): 429 with Retry-After."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.api.conftest import SUBMISSION
from tests.system import System, queued_messages

BURST, EXTRA = 5, 7


async def _burst(api: httpx.AsyncClient, count: int, headers: dict[str, str]) -> tuple[list[httpx.Response], float]:
    began = time.monotonic()
    responses = await asyncio.gather(
        *(api.post("/api/v1/tasks", json=SUBMISSION, headers=headers) for _ in range(count))
    )
    return list(responses), time.monotonic() - began


def _assert_limited(responses: list[httpx.Response], elapsed_s: float, rate_per_s: float) -> list[httpx.Response]:
    """Exactly the burst got through (plus what refilled while they were sent); the rest are 429s
    that say when to come back."""
    codes = [r.status_code for r in responses]
    assert set(codes) <= {202, 429}, [r.text for r in responses if r.status_code not in (202, 429)]
    refilled = int(elapsed_s * rate_per_s)
    assert BURST <= codes.count(202) <= BURST + refilled, (codes, elapsed_s)
    refused = [r for r in responses if r.status_code == 429]
    assert refused
    for response in refused:
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= int(1 / rate_per_s) + 1
        assert "rate limit" in response.json()["detail"]
    return refused


@pytest.mark.system_env(TM_API_KEYS="key-a,key-b", TM_RATE_LIMIT_PER_S="1", TM_RATE_LIMIT_BURST=str(BURST))
async def test_a_burst_past_the_bucket_is_429_per_key(api_system: System) -> None:
    key_a, key_b = {"X-API-Key": "key-a"}, {"Authorization": "Bearer key-b"}
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api:
        responses, elapsed_s = await _burst(api, BURST + EXTRA, key_a)
        refused = _assert_limited(responses, elapsed_s, rate_per_s=1)

        # Another key has a bucket of its own; reads have theirs too.
        others, _ = await _burst(api, BURST, key_b)
        assert [r.status_code for r in others] == [202] * BURST
        task_id = responses[[r.status_code for r in responses].index(202)].json()["task_id"]
        assert (await api.get(f"/api/v1/tasks/{task_id}", headers=key_a)).status_code == 200

        # Retry-After is honest: after waiting that long, a token is there.
        await asyncio.sleep(int(refused[-1].headers["retry-after"]))
        assert (await api.post("/api/v1/tasks", json=SUBMISSION, headers=key_a)).status_code == 202


@pytest.mark.system_env(TM_RATE_LIMIT_PER_S="0.5", TM_RATE_LIMIT_BURST=str(BURST))
async def test_without_keys_the_client_is_its_address(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api:
        responses, elapsed_s = await _burst(api, BURST + EXTRA, {"X-API-Key": "ignored-without-keys"})
        _assert_limited(responses, elapsed_s, rate_per_s=0.5)
        # An unvalidated key is not an identity: another one does not open a fresh bucket.
        assert (await api.post("/api/v1/tasks", json=SUBMISSION, headers={"X-API-Key": "other"})).status_code == 429


@pytest.mark.system_env(TM_RATE_LIMIT_PER_S="0.1", TM_RATE_LIMIT_BURST="3")
async def test_reads_and_writes_are_limited_on_every_api_route(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api:
        task_id = (await api.post("/api/v1/tasks", json=SUBMISSION)).json()["task_id"]
        reads = [(await api.get(f"/api/v1/tasks/{task_id}")).status_code for _ in range(4)]
        writes = [
            (await api.post(f"/api/v1/tasks/{task_id}/revoke")).status_code,
            (await api.delete(f"/api/v1/tasks/{task_id}")).status_code,
            (await api.delete(f"/api/v1/tasks/{task_id}")).status_code,
        ]
        assert reads == [200, 200, 200, 429]
        assert writes == [200, 200, 429]  # the submission took the first write token
        for path in ("/health", "/dashboard", "/dashboard/metrics"):  # not rate limited
            assert (await api.get(path)).status_code == 200


@pytest.mark.system_env(TM_MAX_QUEUE_DEPTH="4", TM_RATE_LIMIT_PER_S="1000", TM_RATE_LIMIT_BURST="1000")
async def test_submissions_past_the_queue_depth_are_429(api_system: System) -> None:
    # No stage service runs, so every accepted task stays queued.
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api:
        accepted = []
        for priority in (0, 3, 7, 10):  # the depth counts every priority stream
            response = await api.post("/api/v1/tasks", json={**SUBMISSION, "priority": priority})
            assert response.status_code == 202, response.text
            accepted.append(response.json()["task_id"])
        assert await queued_messages(api_system.nats_url) == 4

        refused = await api.post("/api/v1/tasks", json=SUBMISSION)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "queue" in refused.json()["detail"]
        assert await queued_messages(api_system.nats_url) == 4  # nothing was queued
        assert (await api.get(f"/api/v1/tasks/{accepted[0]}")).status_code == 200  # reads are not refused

        # Room again once a task leaves its queue (the depth is re-read from the streams within a second).
        assert (await api.delete(f"/api/v1/tasks/{accepted[0]}")).status_code == 200
        async with asyncio.timeout(10):
            while (response := await api.post("/api/v1/tasks", json=SUBMISSION)).status_code == 429:
                await asyncio.sleep(0.1)  # time-based: the next stream read is what the test waits for
        assert response.status_code == 202
        assert await queued_messages(api_system.nats_url) == 4

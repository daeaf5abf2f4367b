"""GET /api/v1/tasks/{id}/events and callback_url validation, on the API alone (tasks stay queued
until revoked, which ends them)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import nats
import pytest

from shared.messages import Stage
from shared.taskstate.store import TaskStore
from shared.wire import TASKS_BUCKET
from tests.api.conftest import SUBMISSION
from tests.sse import collect, server_events
from tests.system import System


async def submit(api: httpx.AsyncClient, **extra: object) -> str:
    response = await api.post("/api/v1/tasks", json={**SUBMISSION, **extra})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


async def test_stream_replays_follows_and_ends_with_the_terminal_event(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api, asyncio.timeout(30):
        task_id = await submit(api)
        async with api.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = server_events(response)
            submitted = await anext(events)  # replayed: it was published before the stream opened
            assert (submitted.event, submitted.data["state"]) == ("state", "PENDING")
            assert submitted.data["task_id"] == task_id
            assert (await api.post(f"/api/v1/tasks/{task_id}/revoke")).status_code == 200
            rest = [event async for event in events]  # live, and the stream ends after it
        assert [(e.data["state"], e.data["previous_state"]) for e in rest] == [("REVOKED", "PENDING")]
        assert int(rest[0].id or 0) > int(submitted.id or 0)

        # Resuming after the first event gives only what came after it.
        headers = {"Last-Event-ID": submitted.id or ""}
        async with api.stream("GET", f"/api/v1/tasks/{task_id}/events", headers=headers) as response:
            resumed = await collect(response)
        assert [(e.id, e.data["state"]) for e in resumed] == [(rest[0].id, "REVOKED")]

        # From the start, an ended task's stream is its whole history.
        async with api.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
            assert [e.data["state"] for e in await collect(response)] == ["PENDING", "REVOKED"]


async def test_a_replayed_task_streams_on_past_its_earlier_runs_end(api_system: System) -> None:
    nc = await nats.connect(api_system.nats_url)
    try:
        store = TaskStore(await nc.jetstream().key_value(TASKS_BUCKET), nc.jetstream(), nc)
        async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api, asyncio.timeout(30):
            task_id = await submit(api)
            await store.update(task_id, lambda s: s.fail("broken", Stage.FETCH))
            await store.update(task_id, lambda s: s.reopen())  # what `task-manager dlq replay` does
            async with api.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
                events = server_events(response)
                seen = [await anext(events) for _ in range(3)]
                assert (await api.post(f"/api/v1/tasks/{task_id}/revoke")).status_code == 200
                seen += [event async for event in events]
    finally:
        await nc.close()
    assert [(e.data["run"], e.data["state"]) for e in seen] == [
        (1, "PENDING"), (1, "FAILURE"), (2, "PENDING"), (2, "REVOKED"),
    ]  # fmt: skip


@pytest.mark.system_env(TM_EVENTS_KEEPALIVE_S="0.2")
async def test_a_quiet_stream_gets_keep_alive_comments(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api, asyncio.timeout(30):
        task_id = await submit(api)
        async with api.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
            async for line in response.aiter_lines():
                if line == ": keep-alive":
                    break


async def test_unknown_task_and_bad_resume_point(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api:
        for task_id in (str(uuid.uuid4()), "not-a-task"):
            response = await api.get(f"/api/v1/tasks/{task_id}/events")
            assert response.status_code == 404 and "not found" in response.json()["detail"]
        task_id = await submit(api)
        for last_event_id in BAD_RESUME_POINTS:
            response = await api.get(f"/api/v1/tasks/{task_id}/events", headers={"Last-Event-ID": last_event_id})
            assert response.status_code == 400, (last_event_id, response.text)
            assert response.json()["detail"].startswith("Last-Event-ID: ")


# Not a JetStream sequence (1 .. 2**64-1 in ASCII digits): 400, never NATS's refusal (503) or int()'s (500).
BAD_RESUME_POINTS: list[str | bytes] = [
    "abc", "0", "-1", "+1", "1.0", "0x10", "1 2",
    str(2**64), "99999999999999999999", "9" * 5000, "1" + "0" * 5000,
    b"\xb2", b"1\xb9",  # superscript digits (latin-1, as the server decodes headers): isdigit(), not int()
]  # fmt: skip


async def test_any_sequence_in_range_is_a_resume_point(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api, asyncio.timeout(30):
        task_id = await submit(api)
        assert (await api.post(f"/api/v1/tasks/{task_id}/revoke")).status_code == 200
        for last_event_id in ("1", "0001", str(2**64 - 1)):
            headers = {"Last-Event-ID": last_event_id}
            async with api.stream("GET", f"/api/v1/tasks/{task_id}/events", headers=headers) as response:
                assert response.status_code == 200, last_event_id
                events = await collect(response)
            assert events and events[-1].data["state"] == "REVOKED", last_event_id  # and the stream ended


@pytest.mark.system_env(TM_API_KEYS="k1")
async def test_the_stream_needs_a_key_like_the_other_task_routes(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api:
        response = await api.get(f"/api/v1/tasks/{uuid.uuid4()}/events")
        assert response.status_code == 401
        response = await api.get(f"/api/v1/tasks/{uuid.uuid4()}/events", headers={"X-API-Key": "k1"})
        assert response.status_code == 404


REFUSED_CALLBACKS = [
    ("http://10.1.2.3/hook", "private"),
    ("http://127.0.0.1:9000/hook", "loopback"),
    ("http://169.254.169.254/latest", "link-local"),
    ("ftp://example.com/hook", "http or https"),
    ("not a url", "http or https"),
]


@pytest.mark.system_env(TM_FETCH_ALLOW_PRIVATE_NETWORKS="false")
async def test_callback_url_is_refused_by_the_address_rules(api_system: System) -> None:
    async with httpx.AsyncClient(base_url=api_system.api_url, timeout=30) as api:
        for callback_url, words in REFUSED_CALLBACKS:
            response = await api.post("/api/v1/tasks", json={**SUBMISSION, "callback_url": callback_url})
            assert response.status_code == 400, response.text
            detail = response.json()["detail"]
            assert detail.startswith("callback_url:") and words in detail, detail

        task_id = await submit(api, callback_url="https://example.com/hooks/tm?token=x")
        stored = (await api.get(f"/api/v1/tasks/{task_id}")).json()
        assert stored["kwargs"] == {"callback_url": "https://example.com/hooks/tm?token=x"}

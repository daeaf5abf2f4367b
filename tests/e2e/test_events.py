"""A task's Server-Sent Events through the whole pipeline: every state change in order, then the end."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.e2e.images import photo
from tests.servers import StaticHTTPServer
from tests.sse import collect
from tests.system import System

TASK = "image_super_resolution_pipeline"


async def test_the_stream_shows_every_change_in_order_and_ends_with_success(
    system: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    source = http_server.add(f"{uuid.uuid4().hex}.png", photo(size=(24, 24)))
    async with httpx.AsyncClient(base_url=system.api_url, timeout=120) as api, asyncio.timeout(120):
        submitted = await api.post(
            "/api/v1/tasks", json={"task_name": TASK, "args": [source, f"s3://{s3_bucket}/e.png"]}
        )
        task_id = submitted.json()["task_id"]
        async with api.stream("GET", f"/api/v1/tasks/{task_id}/events") as response:
            assert response.status_code == 200
            events = await collect(response)

        states = [e.data["state"] for e in events if e.event == "state"]
        assert states == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"], [e.data for e in events]
        last = events[-1].data
        assert last["result"]["output_url"] == f"s3://{s3_bucket}/e.png" and last["progress"] == 1.0
        ids = [int(e.id or 0) for e in events]
        assert ids == sorted(set(ids))  # stream sequences, each once, in order
        revisions = [e.data["revision"] for e in events]
        assert revisions == sorted(set(revisions))
        # One write, so one event, per stage start; each also records the stage before it done.
        started = [e.data["stage"] for e in events if e.data.get("stage_state") == "STARTED"]
        assert started == ["fetch", "classify", "upscale", "upload"], [e.data for e in events]
        assert len(events) == 6, [e.data for e in events]
        final = (await api.get(f"/api/v1/tasks/{task_id}")).json()
        assert [s["state"] for s in final["subtasks"]] == ["SUCCESS"] * 4

        # Resuming from the third event replays exactly what followed it.
        resume = {"Last-Event-ID": events[2].id or ""}
        async with api.stream("GET", f"/api/v1/tasks/{task_id}/events", headers=resume) as response:
            resumed = await collect(response)
        assert [e.id for e in resumed] == [e.id for e in events[3:]]

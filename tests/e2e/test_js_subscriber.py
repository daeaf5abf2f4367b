"""docs/examples/subscriber.mjs, the JavaScript subscriber docs/events.md shows, run with Node and the official
NATS JavaScript client against the real system: it reads a task's entry from the TM_TASKS bucket and follows
its changes from TM_EVENTS to the end. Skips cleanly without node/npm or when the npm registry is out of reach."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.images import photo
from tests.servers import StaticHTTPServer
from tests.system import ROOT, System

EXAMPLE = ROOT / "docs" / "examples" / "subscriber.mjs"
PACKAGES = ("@nats-io/transport-node@3.4.0", "@nats-io/jetstream@3.4.0", "@nats-io/kv@3.4.0")
TASK = "image_super_resolution_pipeline"


@pytest.fixture(scope="module")
def node_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with the example and the NATS client packages installed from npm."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(reason="node and npm are not installed")
    folder = tmp_path_factory.mktemp("js-subscriber")
    shutil.copy(EXAMPLE, folder / EXAMPLE.name)
    try:
        installed = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *PACKAGES],
            cwd=folder, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip(reason="npm install took over 180 s (registry out of reach?)")
    if installed.returncode != 0:
        pytest.skip(reason=f"npm install failed (registry out of reach?): {installed.stderr[-500:]}")
    yield folder


async def test_the_javascript_subscriber_reads_the_entry_and_follows_a_task_to_success(
    system: System, node_project: Path, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    source = http_server.add(f"{uuid.uuid4().hex}.png", photo(size=(24, 24)))
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as api:
        body = {"task_name": TASK, "args": [source, f"s3://{s3_bucket}/js.png"]}
        accepted = await api.post("/api/v1/tasks", json=body)
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["task_id"]
        subscriber = await asyncio.create_subprocess_exec(
            "node", EXAMPLE.name, system.nats_url, task_id, cwd=node_project,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(subscriber.communicate(), timeout=120)
        finally:
            if subscriber.returncode is None:
                subscriber.kill()
        final = (await api.get(f"/api/v1/tasks/{task_id}")).json()
    assert subscriber.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[0]["stored"] in ("PENDING", "RECEIVED", "STARTED", "SUCCESS")  # read from the bucket at once
    events, entry = lines[1:-1], lines[-1]["entry"]
    states = [e["state"] for e in events if e["kind"] == "state"]
    assert states == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"], events  # its whole history, in order
    started = [e["stage"] for e in events if e["kind"] == "stage"]
    assert set(started) <= {"classify", "upscale", "upload"}
    assert entry["task_id"] == task_id and entry["state"] == "SUCCESS"
    assert entry["result"]["output_url"] == final["result"]["output_url"] == f"s3://{s3_bucket}/js.png"

"""The `eta` of GET /api/v1/tasks/{id} on the real system: a queue behind a slow fetch (the input server waits
FETCH_MS per request, one fetch at a time), measured by the workers, read by the API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats

from shared.messages import PIPELINE
from shared.runtime.servicetime import MP_PER_S_KEY, SERVICE_TIME_KEY, STAGE_KEY
from shared.taskstate.status import parse_time
from shared.wire import WORKERS_BUCKET
from tests.e2e.images import photo
from tests.servers import StaticHTTPServer
from tests.system import STAGE_SERVICES, System, wait_terminal, worker_records

TASK = "image_super_resolution_pipeline"
FETCH_MS = 600
QUEUED = 6
TIMEOUT_S = 60


async def wait_measured(nats_url: str, timeout_s: float = 20) -> None:
    """Until a heartbeat of every stage carries its measured time per task (watching the workers bucket)."""
    nc = await nats.connect(nats_url)
    try:
        watcher = await (await nc.jetstream().key_value(WORKERS_BUCKET)).watchall()
        measured: set[str] = set()
        async with asyncio.timeout(timeout_s):
            while measured != {stage.value for stage in PIPELINE}:
                entry = await watcher.updates(timeout=timeout_s)
                if entry is not None and entry.value:
                    record = json.loads(entry.value)
                    if record.get(SERVICE_TIME_KEY):
                        measured.add(record[STAGE_KEY])
        await watcher.stop()
    finally:
        await nc.close()


async def submit(api: httpx.AsyncClient, source: str, output: Path) -> str:
    answer = await api.post("/api/v1/tasks", json={"task_name": TASK, "args": [source, output.as_uri()]})
    assert answer.status_code == 202, answer.text
    return answer.json()["task_id"]


async def status(api: httpx.AsyncClient, task_id: str) -> dict:
    answer = await api.get(f"/api/v1/tasks/{task_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_a_queued_task_gets_an_eta_that_follows_the_queue_and_none_once_ended(
    own_system: System, http_server: StaticHTTPServer, tmp_path: Path
) -> None:
    await own_system.start("api", *STAGE_SERVICES)  # one slot per stage (own_system: TM_CONCURRENCY=1)
    name = f"{uuid.uuid4().hex}.png"
    http_server.add(name, photo("chelsea.png", (48, 32)))
    source = http_server.url(f"slow/{FETCH_MS}/{name}")
    async with httpx.AsyncClient(base_url=own_system.api_url, timeout=30) as api:
        # Nothing measured yet: no estimate rather than a guess.
        first = await submit(api, source, tmp_path / "warm.png")
        assert (await status(api, first))["eta"] is None
        await wait_terminal(own_system.nats_url, [first], TIMEOUT_S)
        await wait_measured(own_system.nats_url)
        upscaler = next(r for r in await worker_records(own_system.nats_url) if r["service"] == "upscaler")
        assert all(rate > 0 for rate in upscaler[MP_PER_S_KEY].values()) and upscaler[MP_PER_S_KEY], upscaler

        ids = [await submit(api, source, tmp_path / f"{i}.png") for i in range(QUEUED)]
        asked = datetime.now(UTC)
        early = [await status(api, task_id) for task_id in ids]
        for found in early:
            assert found["state"] in {"PENDING", "RECEIVED", "STARTED"}
            assert found["eta"] is not None and found["eta_s"] > 0, found
            assert asked < parse_time(found["eta"]) < asked + timedelta(seconds=TIMEOUT_S)
        # The last waits behind the fetches of the others, at FETCH_MS each (nearly 3 s for five).
        assert early[-1]["eta_s"] - early[0]["eta_s"] > 4 * FETCH_MS / 1000 * 0.5, [s["eta_s"] for s in early]

        await wait_terminal(own_system.nats_url, ids[:3], TIMEOUT_S)
        later = await status(api, ids[-1])
        assert later["eta"] is not None
        # Three fewer before it: nearer now, by about what the queue moved.
        assert later["eta_s"] < early[-1]["eta_s"] - 3 * FETCH_MS / 1000 * 0.5, (early[-1], later)

        ended = await wait_terminal(own_system.nats_url, ids, TIMEOUT_S)
        assert {found["state"] for found in ended.values()} == {"SUCCESS"}
        done = await status(api, ids[-1])
        assert done["eta"] is None and done["eta_s"] is None

"""Dead letters end to end: a failed task lands in TM_DEAD, and `task-manager dlq` lists, shows,
replays (the task then succeeds) and discards them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import nats

from tests.e2e.images import photo
from tests.servers import StaticHTTPServer
from tests.system import ROOT, System, wait_terminal

TASK = "image_super_resolution_pipeline"


def dlq(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "dlq", *args],
        cwd=ROOT, env={**os.environ, "NATS_URL": system.nats_url}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_failed_tasks_are_dead_lettered_replayed_and_discarded(
    own_system: System, http_server: StaticHTTPServer, s3_bucket: str
) -> None:
    await own_system.start("api", "fetcher", "classifier", "upscaler", "uploader")
    missing = [f"dlq-later-{n}.png" for n in range(2)]
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        ids = []
        for name in missing:
            response = await api.post(
                "/api/v1/tasks", json={"task_name": TASK, "args": [http_server.url(name), f"s3://{s3_bucket}/{name}"]}
            )
            ids.append(response.json()["task_id"])
        finals = await wait_terminal(own_system.nats_url, ids, timeout_s=30)
        assert {f["state"] for f in finals.values()} == {"FAILURE"}

        listing = dlq(own_system, "list")
        assert listing.returncode == 0, listing.stderr
        assert "2 dead letter(s)" in listing.stdout
        rows = [line.split() for line in listing.stdout.splitlines()[1:-1]]
        seq_of = {row[3]: int(row[0]) for row in rows}
        assert set(seq_of) == set(ids)
        assert all(row[2] == "fetch" and "HTTP 404" in " ".join(row) for row in rows)

        shown = json.loads(dlq(own_system, "show", str(seq_of[ids[0]])).stdout)
        assert shown["task_id"] == ids[0]
        assert shown["headers"]["Tm-Origin-Subject"] == f"tm.work.p5.fetch.{ids[0]}"
        assert shown["message"]["input_url"] == http_server.url(missing[0])

        # The operator fixes the input, then replays the first task; it now succeeds as a second run.
        http_server.add(missing[0], photo(size=(16, 12)))
        replayed = dlq(own_system, "replay", str(seq_of[ids[0]]))
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        status = (await api.get(f"/api/v1/tasks/{ids[0]}")).json()
        assert status["run"] == 2 and status["state"] not in ("FAILURE",)

    # The events stream holds both runs' terminal events; wait for the SUCCESS one.
    nc = await nats.connect(own_system.nats_url)
    sub = await nc.jetstream().subscribe(f"task.events.{TASK}.success", ordered_consumer=True)
    success = json.loads((await sub.next_msg(timeout=60)).data)
    await nc.close()
    assert success["task_id"] == ids[0] and success["run"] == 2
    assert success["result"]["output_width"] == 64

    assert dlq(own_system, "discard", "--all").returncode == 0
    assert "0 dead letter(s)" in dlq(own_system, "list").stdout
    assert dlq(own_system, "show", "999").returncode == 1

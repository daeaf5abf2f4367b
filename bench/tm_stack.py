"""The task-manager stack of bench/samework.py: what `task-manager up` runs, followed the way clients follow it.

bench/harness.py starts nats-server, the API, one process per stage and the notifier (no sink: the photos
come from bench/workload.py's server), with the uploader reaching SeaweedFS through the standard AWS_*
variables. Each task is a POST /api/v1/tasks, then, as soon as it is answered, its own SSE stream
(GET /api/v1/tasks/{id}/events) read until the terminal event; a task whose terminal state is not SUCCESS
is a failure, with the state and error it ended with. A stream that breaks is resumed with Last-Event-ID
(at most MAX_RESUMES times), and every resume is reported with its cause.

The client is aiohttp: 500 SSE streams at once means 500 connections, and httpx's pool scans every
connection on each request (bench/README.md, "Caveats"), which would make the client the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from bench.harness import Harness
from bench.workload import Job, Outcome
from shared.messages import TASK_NAME
from shared.taskstate.status import TaskState

MAX_INFLIGHT_POSTS = 64  # a burst is sent as fast as the API answers, as bench/load.py's "max" does
# uvicorn closes a keep-alive connection idle for 5 s; aiohttp's default 15 s would reuse one it is closing.
KEEPALIVE_S = 2.0
MAX_RESUMES = 3  # event streams opened again after a break, per task, before it counts as failed


class TaskManagerStack:
    name = "task-manager"

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.harness = Harness(workdir, env=env, extra_services=("notifier",))
        self.runner = asyncio.Runner()  # one event loop for the stack's life: start, every run, stop

    def start(self) -> None:
        self.runner.run(self.harness.start(None))

    def roots(self) -> dict[str, int]:
        return {child.role: child.pid for child in self.harness.children}

    def nats_messages(self) -> dict[str, tuple[int, int]]:
        """Messages so far per NATS connection name: (sent by the client, delivered to it)."""
        counts = self.runner.run(self.harness.connections())
        return {name: (row["in_msgs"], row["out_msgs"]) for name, row in counts.items()}

    def run(self, jobs: list[Job], rate: float | None, timeout_s: float) -> list[Outcome]:
        return self.runner.run(self._run(jobs, rate, timeout_s))

    async def _run(self, jobs: list[Job], rate: float | None, timeout_s: float) -> list[Outcome]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        posts = asyncio.Semaphore(MAX_INFLIGHT_POSTS)
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
        timeout = aiohttp.ClientTimeout(total=None)  # the run's deadline bounds every task instead
        async with aiohttp.ClientSession(self.harness.api_url, connector=connector, timeout=timeout) as session:
            pending = []
            began = time.perf_counter()
            for k, job in enumerate(jobs):
                if rate:
                    await asyncio.sleep(max(began + k / rate - time.perf_counter(), 0))
                pending.append(asyncio.create_task(_task(session, posts, job, deadline)))
            return list(await asyncio.gather(*pending))

    def logs(self) -> str:
        return self.harness.logs()

    def stop(self) -> None:
        try:
            self.harness.stop()
        finally:
            self.runner.close()


async def _task(session: aiohttp.ClientSession, posts: asyncio.Semaphore, job: Job, deadline: float) -> Outcome:
    outcome = Outcome(job.index)
    body = {"task_name": TASK_NAME, "args": [job.input_url, job.output_url]}
    try:
        async with asyncio.timeout_at(deadline):
            async with posts:
                outcome.sent = time.perf_counter()
                async with session.post("/api/v1/tasks", json=body) as response:
                    if response.status != 202:
                        outcome.error = f"POST: HTTP {response.status}: {(await response.text())[:200]}"
                        return outcome
                    task_id = (await response.json())["task_id"]
            await _follow(session, task_id, outcome)
    except TimeoutError:
        outcome.error = "no terminal event before the deadline"
    except aiohttp.ClientError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    return outcome


async def _follow(session: aiohttp.ClientSession, task_id: str, outcome: Outcome) -> None:
    """Read the task's SSE stream until its terminal event; `data:` lines are TaskEvents (one line each).

    A stream that breaks is opened again with Last-Event-ID, as EventSource does; each time is recorded."""
    last_id = None
    while True:
        headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_id} if last_id else {})
        try:
            async with session.get(f"/api/v1/tasks/{task_id}/events", headers=headers) as response:
                if response.status != 200:
                    outcome.error = f"events: HTTP {response.status}"
                    return
                pending_id = None
                async for line in response.content:
                    if line.startswith(b"id:"):
                        pending_id = line[3:].strip().decode()
                    elif line.strip() == b"":
                        last_id = pending_id or last_id  # an event's id counts once the event is complete
                    elif line.startswith(b"data:"):
                        event = json.loads(line[5:])
                        if TaskState(event["state"]).terminal:
                            outcome.done = time.perf_counter()
                            if event["state"] != TaskState.SUCCESS.value:
                                outcome.error = f"{event['state']}: {event.get('error')}"
                            return
            why = "the event stream ended without a terminal event"
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        if len(outcome.resumes) >= MAX_RESUMES:
            outcome.error = why
            return
        outcome.resumes.append(why)

"""Scaling out: 1, then 3 processes of the fetcher and of the classifier on the same durable consumers.

Each phase submits N real tasks through the API and shows that (a) every task ends SUCCESS, with one
terminal event, (b) every instance did some of the work (its own counter on its own /metrics endpoint),
and (c) none was done twice: per stage the instances' succeeded counts add up to N, each task's state
names exactly the instance whose log has its one stage_outcome line, and nothing was retried or dropped.

To make the spread certain rather than likely, the scaled stages are paused (SIGSTOP) while the tasks are
submitted and resumed together once their queue holds all N: instances that start at different moments (a
process start takes seconds here) would otherwise leave the late ones nothing to do. The fetch reads from
a slow URL (50 ms), so it is I/O-bound and its drain time shows the gain of more instances.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.messages import Stage
from shared.wire import EVENTS_STREAM, EVENTS_SUBJECTS, queued_filter
from tests.e2e.images import photo
from tests.servers import NatsServer, StaticHTTPServer
from tests.system import System, wait_terminal, worker_records

TASK = "image_super_resolution_pipeline"
TASKS = 12  # per phase: at least 4 per instance at 3 instances
SCALED = {"fetcher": Stage.FETCH, "classifier": Stage.CLASSIFY}
TIMEOUT_S = 60.0


@pytest.fixture
async def scaling_system(own_nats: NatsServer, tmp_path: Path) -> AsyncIterator[System]:
    models = tmp_path / "models"  # empty: the upscaler's Lanczos fallback keeps the last stages cheap
    models.mkdir()
    env = {
        "TM_MODEL_DIR": str(models),
        "TM_DEVICE": "cpu",
        "TM_METRICS_HOST": "127.0.0.1",
        "TM_QUEUE_TIMEOUT_S": "300",  # tasks wait while the scaled stages are paused: not a timeout
    }
    running = System(own_nats.url, tmp_path / "logs", env)
    try:
        await running.start("api", "upscaler", "uploader")
        yield running
    finally:
        for process in running.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        running.stop()


def messages_total(metrics_text: str, stage: Stage, outcome: str) -> float:
    """tm_stage_messages_total{stage, outcome} on one instance's /metrics page (0 when absent)."""
    wanted = {"stage": stage.value, "outcome": outcome}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "tm_stage_messages_total" and sample.labels == wanted:
                return sample.value
    return 0.0


async def scrape_settled(urls: dict[str, str], stage: Stage, expected: int) -> dict[str, str]:
    """Every instance's /metrics page, once their `stage` successes add up to `expected` (bounded wait).

    A stage counts a message after its ack returns, which can be after the next stages have already
    finished the task, so the count may lag the task's SUCCESS by a moment.
    """
    async with httpx.AsyncClient(timeout=5) as client:
        deadline = time.monotonic() + 10
        while True:
            pages = {name: (await client.get(url)).text for name, url in urls.items()}
            if sum(messages_total(page, stage, "succeeded") for page in pages.values()) >= expected:
                return pages
            if time.monotonic() > deadline:
                return pages  # the assertions that follow say what is missing
            await asyncio.sleep(0.05)


async def heartbeats(nats_url: str) -> dict[int, dict]:
    """The workers bucket's records by pid."""
    return {record["pid"]: record for record in await worker_records(nats_url)}


def signal_all(system: System, names: list[str], sig: int) -> None:
    for name in names:
        os.kill(system.processes[name].pid, sig)


async def submit(system: System, http_server: StaticHTTPServer, out_dir: Path) -> list[str]:
    name = f"{uuid.uuid4().hex}.png"
    http_server.add(name, photo("chelsea.png", (64, 64)))
    source = http_server.url(f"slow/50/{name}")
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as api:
        answers = await asyncio.gather(
            *(
                api.post("/api/v1/tasks", json={"task_name": TASK, "args": [source, f"file://{out_dir}/{i}.png"]})
                for i in range(TASKS)
            )
        )
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers if a.status_code != 202]
    return [a.json()["task_id"] for a in answers]


async def wait_queued(nats_url: str, stage: Stage, task_ids: list[str], subscribed: asyncio.Event) -> None:
    """Until every task's message for `stage` has been stored (its queue's doorbell rang for it)."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.subscribe(queued_filter(stage))
        await nc.flush()
        subscribed.set()
        waiting = set(task_ids)
        async with asyncio.timeout(TIMEOUT_S):
            while waiting:
                waiting.discard((await sub.next_msg(timeout=TIMEOUT_S)).subject.rsplit(".", 1)[1])
    finally:
        await nc.close()


async def event_counts(nats_url: str) -> Counter[str]:
    """How many terminal events each task has in the events stream."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        # The stream also keeps every state change (other subjects): count the terminal events only.
        info = await js.stream_info(EVENTS_STREAM, subjects_filter=EVENTS_SUBJECTS)
        stored = sum((info.state.subjects or {}).values())
        sub = await js.subscribe(EVENTS_SUBJECTS, ordered_consumer=True)
        return Counter([json.loads((await sub.next_msg(timeout=10)).data)["task_id"] for _ in range(stored)])
    finally:
        await nc.close()


def stage_outcomes(log: Path, task_ids: set[str]) -> list[tuple[str, str]]:
    """(task_id, outcome) of each stage_outcome line in a service's JSON log, for these tasks."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "stage_outcome" and record.get("task_id") in task_ids:
            found.append((record["task_id"], record["outcome"]))
    return found


async def run_phase(system: System, http_server: StaticHTTPServer, out_dir: Path, instances: int) -> dict[str, float]:
    names = {s: [s if i == 1 else f"{s}-{i}" for i in range(1, instances + 1)] for s in SCALED}
    await system.start(*SCALED, instances=dict.fromkeys(SCALED, instances), TM_CONCURRENCY="1")
    records = await heartbeats(system.nats_url)
    workers = {name: records[system.processes[name].pid] for group in names.values() for name in group}
    assert all(w["metrics_url"] and w["metrics_url"].startswith("http://127.0.0.1:") for w in workers.values())

    signal_all(system, names["fetcher"] + names["classifier"], signal.SIGSTOP)
    ids = await submit(system, http_server, out_dir)
    subscribed = asyncio.Event()
    fetched = asyncio.create_task(wait_queued(system.nats_url, Stage.CLASSIFY, ids, subscribed))
    await asyncio.wait_for(subscribed.wait(), timeout=10)
    began = time.monotonic()
    signal_all(system, names["fetcher"], signal.SIGCONT)
    await fetched
    fetch_s = time.monotonic() - began
    signal_all(system, names["classifier"], signal.SIGCONT)
    finished = await wait_terminal(system.nats_url, ids, timeout_s=TIMEOUT_S)

    # (a) every task SUCCESS, with exactly one terminal event
    assert {task_id: status["state"] for task_id, status in finished.items()} == dict.fromkeys(ids, "SUCCESS")
    events = await event_counts(system.nats_url)
    assert [events[task_id] for task_id in ids] == [1] * TASKS

    for service, stage in SCALED.items():
        pages = await scrape_settled({name: workers[name]["metrics_url"] for name in names[service]}, stage, TASKS)
        done = {name: messages_total(pages[name], stage, "succeeded") for name in names[service]}
        for name in names[service]:
            others = [messages_total(pages[name], stage, o) for o in ("retried", "dropped", "failed", "error")]
            assert others == [0, 0, 0, 0], (name, pages[name])
        # (b) every instance worked; (c) no task twice: the instances' counts add up to N
        assert all(n > 0 for n in done.values()), done
        assert sum(done.values()) == TASKS, done
        # (c) per task: the state names one instance, and that instance's log alone has the task's line
        by_worker = Counter(
            next(s["worker_id"] for s in finished[t]["subtasks"] if s["name"] == stage.value) for t in ids
        )
        assert by_worker == Counter({workers[name]["worker_id"]: int(n) for name, n in done.items()})
        lines = [line for name in names[service] for line in stage_outcomes(system.log_dir / f"{name}.log", set(ids))]
        assert sorted(lines) == sorted((task_id, "success") for task_id in ids)
    system.stop(*names["fetcher"], *names["classifier"])
    return {"fetch_s": fetch_s}


async def test_three_instances_share_the_work_and_do_each_task_once(
    scaling_system: System, http_server: StaticHTTPServer, tmp_path: Path
) -> None:
    timings = []
    for instances in (1, 3):
        out_dir = tmp_path / f"out{instances}"
        out_dir.mkdir()
        timings.append(await run_phase(scaling_system, http_server, out_dir, instances))
    one, three = (t["fetch_s"] for t in timings)
    print(f"fetch stage drained {TASKS} tasks in {one:.2f} s with 1 instance, {three:.2f} s with 3")
    # Each fetch waits 50 ms on its input: three processes drain the same queue faster than one.
    assert three < one, (one, three)
    # The single upscaler saw both phases; its page also carries the engine's own counters.
    upscaler = (await heartbeats(scaling_system.nats_url))[scaling_system.processes["upscaler"].pid]
    page = (await scrape_settled({"upscaler": upscaler["metrics_url"]}, Stage.UPSCALE, 2 * TASKS))["upscaler"]
    assert messages_total(page, Stage.UPSCALE, "succeeded") == 2 * TASKS, [
        line for line in page.splitlines() if line.startswith("tm_stage_messages_total")
    ]
    assert "tm_upscaler_tiles_total" in page and "tm_upscaler_fp16_fallbacks_total" in page

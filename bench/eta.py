"""How good the `eta` of GET /api/v1/tasks/{id} is, and what it costs a GET (issue #14).

    python bench/eta.py                               # a burst of 200, Lanczos (no weights), as samework runs
    python bench/eta.py --tasks 100 --model realesr-animevideov3 --model-dir ../shared/models   # a real network

The stack and the photos are bench/samework.py's (bench/tm_stack.py, bench/workload.py: four real photos at
128 x 96 on a local HTTP server, outputs in a local S3, the upscaler on the CPU). After `--warmup` tasks (so every
stage has measured a task), a burst of `--tasks` is submitted, 64 POSTs in flight. For each task the client reads
its status once right after the 202 ("submitted") and once more when half of that estimate has passed ("mid"),
and follows its SSE stream to the terminal event ("done"). The error of an estimate is (asked + eta_s) - done; the
tables give its median and p90, in seconds and as a share of the time that was actually left (done - asked), by
the task's place in the burst (first, middle, last third). Meanwhile a probe GETs, in turns, a task that has
ended (no eta to compute) and one under way (with it), so the two latencies are measured under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/eta.py`: make bench/, shared/, services/, tests/ importable
    sys.path.insert(0, str(ROOT))

from bench.results import percentile  # noqa: E402
from bench.tm_stack import KEEPALIVE_S, MAX_INFLIGHT_POSTS, TaskManagerStack, _follow  # noqa: E402
from bench.workload import Job, Outcome, start_infra  # noqa: E402
from shared.messages import TASK_NAME  # noqa: E402
from shared.runtime.servicetime import MP_PER_S_KEY, SERVICE_TIME_KEY  # noqa: E402
from tests.e2e.test_eta import wait_measured  # noqa: E402
from tests.system import worker_records  # noqa: E402

PROBE_EVERY_S = 0.02


@dataclass
class Reading:
    asked: float  # perf_counter when the answer came
    eta_s: float | None
    state: str


@dataclass
class Followed:
    index: int
    task_id: str = ""
    readings: list[Reading] = field(default_factory=list)  # submitted, then mid
    outcome: Outcome | None = None


@dataclass
class Probe:
    with_eta_ms: list[float] = field(default_factory=list)
    without_eta_ms: list[float] = field(default_factory=list)
    ended_task: str = ""
    under_way: list[str] = field(default_factory=list)


async def read(session: aiohttp.ClientSession, task_id: str) -> tuple[Reading, float]:
    began = time.perf_counter()
    async with session.get(f"/api/v1/tasks/{task_id}") as response:
        body = await response.json()
    now = time.perf_counter()
    return Reading(now, body.get("eta_s"), body["state"]), (now - began) * 1000


async def follow(session: aiohttp.ClientSession, posts: asyncio.Semaphore, job: Job, probe: Probe) -> Followed:
    followed = Followed(job.index)
    outcome = followed.outcome = Outcome(job.index)
    async with posts:
        outcome.sent = time.perf_counter()
        body = {"task_name": TASK_NAME, "args": [job.input_url, job.output_url]}
        async with session.post("/api/v1/tasks", json=body) as response:
            if response.status != 202:
                outcome.error = f"POST: HTTP {response.status}"
                return followed
            followed.task_id = (await response.json())["task_id"]
    probe.under_way.append(followed.task_id)
    done = asyncio.create_task(_follow(session, followed.task_id, outcome))
    first, _ = await read(session, followed.task_id)
    followed.readings.append(first)
    if first.eta_s is not None:
        await asyncio.wait([done], timeout=first.eta_s / 2)
        if not done.done():
            followed.readings.append((await read(session, followed.task_id))[0])
    await done
    probe.under_way.remove(followed.task_id)
    return followed


async def probing(session: aiohttp.ClientSession, probe: Probe, stop: asyncio.Event) -> None:
    """GET an ended task and a task under way in turns, every PROBE_EVERY_S, until `stop`."""
    turn = 0
    while not stop.is_set():
        turn += 1
        if turn % 2 and probe.under_way:
            reading, ms = await read(session, random.choice(probe.under_way))
            if reading.eta_s is not None:
                probe.with_eta_ms.append(ms)
        else:
            probe.without_eta_ms.append((await read(session, probe.ended_task))[1])
        await asyncio.sleep(PROBE_EVERY_S)


async def burst(api_url: str, jobs: list[Job], ended_task: str) -> tuple[list[Followed], Probe]:
    posts = asyncio.Semaphore(MAX_INFLIGHT_POSTS)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
    probe, stop = Probe(ended_task=ended_task), asyncio.Event()
    async with aiohttp.ClientSession(api_url, connector=connector) as session:
        prober = asyncio.create_task(probing(session, probe, stop))
        followed = await asyncio.gather(*(follow(session, posts, job, probe) for job in jobs))
        stop.set()
        await prober
    return list(followed), probe


def errors(followed: list[Followed], which: int) -> list[tuple[int, float, float]]:
    """(index, error s, error / time actually left) of each task's `which`th reading that had an eta."""
    rows = []
    for task in followed:
        done = task.outcome.done if task.outcome and task.outcome.ok else None
        if done is None or len(task.readings) <= which or task.readings[which].eta_s is None:
            continue
        reading = task.readings[which]
        left = done - reading.asked
        if left <= 0:  # it ended before the answer reached the client: no time left to estimate
            continue
        error = reading.asked + (reading.eta_s or 0.0) - done
        rows.append((task.index, error, abs(error) / left))
    return rows


def _f(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def table(followed: list[Followed]) -> str:
    count = len(followed)
    thirds = [("first third", 0, count // 3), ("middle third", count // 3, 2 * count // 3)]
    thirds += [("last third", 2 * count // 3, count), ("all", 0, count)]
    lines = [
        "| estimate | tasks | median abs error s | p90 s | median error / time left | p90 | median signed error s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for which, label in ((0, "submitted"), (1, "mid")):
        rows = errors(followed, which)
        for name, low, high in thirds:
            part = [r for r in rows if low <= r[0] < high]
            absolute, share, signed = [abs(r[1]) for r in part], [r[2] for r in part], [r[1] for r in part]
            lines.append(
                f"| {label}, {name} | {len(part)} | {_f(percentile(absolute, 50), '.2f')} "
                f"| {_f(percentile(absolute, 90), '.2f')} | {_f(percentile(share, 50), '.0%')} "
                f"| {_f(percentile(share, 90), '.0%')} | {_f(percentile(signed, 50), '+.2f')} |"
            )
    return "\n".join(lines)


def latency_table(probe: Probe) -> str:
    lines = ["| GET /api/v1/tasks/{id} | requests | p50 ms | p99 ms |", "| --- | --- | --- | --- |"]
    for name, values in (("ended task (no eta)", probe.without_eta_ms), ("task under way (eta)", probe.with_eta_ms)):
        lines.append(
            f"| {name} | {len(values)} | {_f(percentile(values, 50), '.1f')} | {_f(percentile(values, 99), '.1f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds for the warm-up and for the burst")
    parser.add_argument("--model-dir", type=Path, help="weights for the upscaler (default: none, Lanczos)")
    parser.add_argument("--env", action="append", default=[], help="K=V for the services (repeatable)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-eta-") as tmp:
        workdir = Path(tmp)
        infra = start_infra(workdir)
        model_dir = args.model_dir.resolve() if args.model_dir else workdir / "models"
        model_dir.mkdir(exist_ok=True)
        env = {**infra.s3.env(), "TM_MODEL_DIR": str(model_dir), "TM_DEVICE": "cpu"}
        env |= dict(item.split("=", 1) for item in args.env)
        stack = TaskManagerStack(workdir / "stack", env)
        try:
            stack.start()
            warm = stack.run(infra.jobs("warmup", args.warmup), None, args.timeout)
            if not any(o.ok for o in warm):
                raise RuntimeError(f"no warm-up task succeeded: {warm[0].error}\n{stack.logs()}")
            ended = stack.runner.run(_last_task(stack.harness.api_url))
            assert stack.harness.nats is not None
            stack.runner.run(asyncio.wait_for(wait_measured(stack.harness.nats.url), 30))  # TM_HEARTBEAT_S: 5 s
            measured = stack.runner.run(worker_records(stack.harness.nats.url))
            began = time.perf_counter()
            followed, probe = stack.runner.run(
                asyncio.wait_for(burst(stack.harness.api_url, infra.jobs("burst", args.tasks), ended), args.timeout)
            )
            wall = time.perf_counter() - began
        finally:
            stack.stop()
            infra.stop()
    ok = sum(1 for f in followed if f.outcome and f.outcome.ok)
    print(f"{ok}/{args.tasks} SUCCESS in {wall:.1f} s ({ok / wall:.1f} tasks/s)")
    timing = [
        f"{r['stage']} {r['service_time_s'] * 1000:.0f} ms x{r.get('concurrency')}"
        + (f" {r[MP_PER_S_KEY]}" if MP_PER_S_KEY in r else "")
        for r in measured
        if SERVICE_TIME_KEY in r
    ]
    print("measured before the burst (per task, slots):", ", ".join(timing))
    print(table(followed))
    print()
    print(latency_table(probe))
    return 0 if ok == args.tasks else 1


async def _last_task(api_url: str) -> str:
    """A task that has ended (the probe's GET without an eta): the newest one the list has."""
    async with aiohttp.ClientSession(api_url) as session:
        async with session.get("/api/v1/tasks", params={"limit": 1}) as response:
            body = await response.json()
    return body["tasks"][0]["task_id"]


if __name__ == "__main__":
    raise SystemExit(main())

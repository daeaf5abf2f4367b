"""GET /api/v1/tasks at 100,000 stored tasks: latency of a page of 50, over HTTP (issue #13).

    python bench/list_tasks.py                  # 100,000 tasks, 300 requests per query shape
    python bench/list_tasks.py --tasks 20000 --requests 100

Starts a nats-server and the API (`python -m services.api`, as `task-manager up` runs it), writes the
tasks into the task bucket as the pipeline leaves them (states, categories, models, priorities spread
out), waits until the API's list has them all (the time its index takes to read the bucket), then asks
each query shape one request at a time and prints p50 / p95 / p99 ms, the API's resident memory, and
the index's start-up time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.results import percentile  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.messages import Category, Classification  # noqa: E402
from shared.nats import declare  # noqa: E402
from shared.taskstate.status import TaskState, TaskStatus, format_time  # noqa: E402
from shared.wire import task_entry_subject  # noqa: E402
from tests.servers import start_nats  # noqa: E402
from tests.system import System  # noqa: E402

STATES = [TaskState.SUCCESS] * 7 + [TaskState.FAILURE, TaskState.TIMEOUT, TaskState.REVOKED, TaskState.PENDING]
CATEGORIES = list(Category)
MODELS = {Category.PHOTO: "RealESRGAN_x4plus", Category.PORTRAIT: "RealESRGAN_x4plus",
          Category.ANIME: "RealESRGAN_x4plus_anime_6B", Category.TEXT: "realesr-general-x4v3"}  # fmt: skip


def task(n: int, began: datetime, spacing_ms: int) -> bytes:
    state, category = STATES[n % len(STATES)], CATEGORIES[n % len(CATEGORIES)]
    status = TaskStatus.new(
        str(uuid.uuid4()), priority=n % 11, input_url=f"https://example.com/in/{n}.jpg",
        output_url=f"s3://bench/out/{n}.png",
    )  # fmt: skip
    status.submitted_at = format_time(began + timedelta(milliseconds=spacing_ms * n))
    status.state = state
    status.classification = Classification(category=category, width=1920, height=1080, aspect_ratio=1.78)
    if state.terminal:
        status.completed_at = format_time(began + timedelta(milliseconds=spacing_ms * n + 900))
    if state == TaskState.SUCCESS:
        status.result = {"model": MODELS[category], "output_url": status.output_url}
    if state == TaskState.FAILURE:
        status.error = "input URL returned HTTP 404"
    return status.to_json()


async def fill(nats_url: str, tasks: int) -> float:
    nc = await nats.connect(nats_url)
    js = (await declare(nc, Settings(nats_url=nats_url))).js  # the bucket, as the API would declare it
    began = datetime.now(UTC) - timedelta(days=2)
    spacing_ms = 2 * 24 * 3600 * 1000 // tasks  # two days of history, evenly
    start = time.perf_counter()
    for first in range(0, tasks, 1000):
        values = [task(n, began, spacing_ms) for n in range(first, min(first + 1000, tasks))]
        ids = [TaskStatus.from_json(v).task_id for v in values]
        await asyncio.gather(*(js.publish(task_entry_subject(i), v) for i, v in zip(ids, values, strict=True)))
    await nc.close()
    return time.perf_counter() - start


def shapes(now: datetime) -> dict[str, dict[str, object]]:
    return {
        "newest 50": {},
        "state=FAILURE": {"state": "FAILURE"},
        "state=SUCCESS&category=anime": {"state": "SUCCESS", "category": "anime"},
        "priority=3&model=realesr-general-x4v3": {"priority": 3, "model": "realesr-general-x4v3"},
        "submitted in an hour, a day ago": {
            "submitted_since": format_time(now - timedelta(hours=25)),
            "submitted_until": format_time(now - timedelta(hours=24)),
        },
        "id_prefix (4 hex)": {"id_prefix": "abcd"},
        "state=TIMEOUT, page 20 (cursor)": {"state": "TIMEOUT"},
        "no match (reads every FAILURE row): state=FAILURE&priority=0": {"state": "FAILURE", "priority": 0},
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        server = start_nats(Path(workdir) / "nats")
        system = System(server.url, Path(workdir) / "logs", {})
        try:
            fill_s = await fill(server.url, args.tasks)
            began = time.perf_counter()  # the API starts on a full bucket, as after a restart
            await system.start("api")
            async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as client:
                while (await client.get("/api/v1/tasks", params={"limit": 1, "id_prefix": "0"})).status_code != 200:
                    await asyncio.sleep(0.05)
                # The list follows the bucket: wait until the newest task (written in the last batch) is in it.
                while not _newest_listed(await client.get("/api/v1/tasks", params={"limit": 1}), args.tasks):
                    await asyncio.sleep(0.05)
                caught_up_s = time.perf_counter() - began
                rows = []
                for name, params in shapes(datetime.now(UTC)).items():
                    params = {**params, "limit": 50}
                    if "cursor" in name:
                        for _ in range(19):
                            cursor = (await client.get("/api/v1/tasks", params=params)).json()["next_cursor"]
                            params["cursor"] = cursor
                    latencies, count = [], 0
                    for _ in range(args.requests):
                        start = time.perf_counter()
                        response = await client.get("/api/v1/tasks", params=params)
                        latencies.append((time.perf_counter() - start) * 1000)
                        assert response.status_code == 200, response.text
                        count = len(response.json()["tasks"])
                    rows.append((name, count, *(percentile(latencies, q) for q in (50, 95, 99))))
            rss = rss_mib(system.processes["api"].pid)
        finally:
            system.stop()
            server.stop()
    print(f"\n## GET /api/v1/tasks at {args.tasks} stored tasks ({args.requests} requests per shape, one at a time)\n")
    print(
        f"bucket filled in {fill_s:.1f} s; the API started on it and listed every task {caught_up_s:.1f} s later; "
        f"API RSS {rss:.0f} MiB\n"
    )
    print("| query (limit 50) | tasks returned | p50 ms | p95 ms | p99 ms |\n| --- | --- | --- | --- | --- |")
    for name, count, p50, p95, p99 in rows:
        print(f"| {name} | {count} | {p50:.1f} | {p95:.1f} | {p99:.1f} |")


def _newest_listed(response: httpx.Response, tasks: int) -> bool:
    listed = response.json()["tasks"] if response.status_code == 200 else []
    return bool(listed) and str(listed[0]["input_url"]).endswith(f"/in/{tasks - 1}.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()

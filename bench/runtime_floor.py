"""task-manager's stage runtime with handlers that do nothing, measured as bench/nats_floor.py measures the bare floor.

    python bench/runtime_floor.py                      # 2000 tasks through 4 StageRunner processes
    python bench/runtime_floor.py --thread --log --metrics

Each stage is a process running shared/runtime/stage.py's StageRunner (priority puller, compare-and-set start with
the state hint, change events, publish of the next message, ack) around a handler that returns the message
as it came; the last stage writes SUCCESS, as the uploader does. The producer creates the task's entry and
publishes its first message as the API does. `--thread` adds the hop to a worker thread every real
handler makes, `--log` writes the service's JSON log lines to a file, `--metrics` records the Prometheus
metrics. The difference to `bench/nats_floor.py` is the runtime's own cost; the difference to
`bench/samework.py --size 16x12` is HTTP, S3, the API, SSE and a busier machine (bench/README.md, "The floor").
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.nats_floor import cpu_s, print_table  # noqa: E402
from tests.servers.nats import start_nats  # noqa: E402

STAGES = ("fetch", "classify", "upscale", "upload")
SETTLE_S = 4.0  # the stage processes' imports and topology declaration are not the pipeline's cost


def run_stage(url: str, name: str, tasks: int, options: argparse.Namespace, spent: multiprocessing.Queue) -> None:
    import uvloop

    os.environ["TM_NATS_URL"] = url
    sys.stdout = open(Path(tempfile.gettempdir()) / f"runtime-floor-{name}.log" if options.log else os.devnull, "w")  # noqa: SIM115
    spent.put((name, uvloop.run(_stage(name, tasks, options))))


async def _stage(name: str, tasks: int, options: argparse.Namespace) -> float:
    from shared.config import Settings
    from shared.logging import configure_logging
    from shared.messages import Stage, TaskMessage
    from shared.nats import connect, declare
    from shared.runtime.job import Job
    from shared.runtime.metrics import WorkerMetrics
    from shared.runtime.stage import StageRunner

    settings = Settings()
    configure_logging(name)
    nc = await connect(settings, name=name)
    topology = await declare(nc, settings)
    stage, handled, all_done = Stage(name), [0], asyncio.Event()

    async def handle(job: Job) -> TaskMessage | None:
        if options.thread:
            await asyncio.to_thread(len, job.task.task_id)
        handled[0] += 1
        if handled[0] >= tasks:  # after this message's own publish and ack
            asyncio.get_running_loop().call_later(0.2, all_done.set)
        if stage == Stage.UPLOAD:
            await job.store.update(job.task.task_id, lambda s: s.succeed({"output_url": job.task.output_url}))
            return None
        return job.task

    metrics = None
    if options.metrics:
        metrics = WorkerMetrics(name, f"{name}-bench", "bench")
        metrics.serve("127.0.0.1", 0)
    runner = StageRunner(stage, handle, topology, settings, f"{name}-bench", metrics)
    began = time.process_time()
    running = asyncio.create_task(runner.run())
    await all_done.wait()
    used = time.process_time() - began
    runner.stop()
    await running
    await nc.close()
    return used


def produce(url: str, tasks: int, rate: float | None, spent: multiprocessing.Queue) -> None:
    import uvloop

    os.environ["TM_NATS_URL"] = url
    spent.put(("producer (as the API)", uvloop.run(_produce(tasks, rate))))


async def _produce(tasks: int, rate: float | None) -> float:
    from shared.config import Settings
    from shared.messages import PIPELINE, PRIORITIES, TaskMessage
    from shared.nats import connect, declare
    from shared.taskstate.status import TaskStatus
    from shared.taskstate.store import TaskStore
    from shared.wire import work_subject

    nc = await connect(Settings(), name="producer")
    topology = await declare(nc, Settings())
    store = TaskStore.of(topology)
    began, started = time.process_time(), time.monotonic()
    for n in range(tasks):
        if rate:  # paced as clients send: each process wakes for every message instead of working through a queue
            await asyncio.sleep(max(started + n / rate - time.monotonic(), 0))
        task_id, priority = str(uuid.uuid4()), PRIORITIES[n % len(PRIORITIES)]
        record = TaskStatus.new(
            task_id, priority=priority, input_url="http://127.0.0.1:9/in.png", output_url="s3://bench/out.png"
        )
        revision = await store.create(record)
        message = TaskMessage(
            task_id=task_id,
            priority=priority,
            input_url=record.input_url or "",
            output_url=record.output_url or "",
            submitted_at=record.submitted_at,
            state_hint=record.to_json().decode(),
            state_revision=revision,
        )
        headers = {"Nats-Msg-Id": f"{task_id}.{PIPELINE[0].value}.run1"}
        await topology.js.publish(work_subject(priority, PIPELINE[0], task_id), message.pack(), headers=headers)
    used = time.process_time() - began
    await nc.close()
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--thread", action="store_true", help="hop to a worker thread in every handler")
    parser.add_argument("--log", action="store_true", help="write the JSON log lines to a file")
    parser.add_argument("--metrics", action="store_true", help="record the Prometheus metrics")
    parser.add_argument("--rate", type=float, default=None, help="tasks/s sent (default: all at once)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        server = start_nats(Path(store))
        try:
            spent: multiprocessing.Queue = multiprocessing.Queue()
            stages = [
                multiprocessing.Process(target=run_stage, args=(server.url, name, options.tasks, options, spent))
                for name in STAGES
            ]
            for process in stages:
                process.start()
            time.sleep(SETTLE_S)
            server_before, began = cpu_s(server.process.pid), time.monotonic()
            producer = multiprocessing.Process(target=produce, args=(server.url, options.tasks, options.rate, spent))
            producer.start()
            rows = dict(spent.get(timeout=600) for _ in range(len(STAGES) + 1))
            elapsed = time.monotonic() - began
            rows["nats-server"] = cpu_s(server.process.pid) - server_before
            for process in [*stages, producer]:
                process.join(30)
        finally:
            server.stop()
    extras = [flag for flag in ("thread", "log", "metrics") if getattr(options, flag)]
    title = (
        f"task-manager's StageRunner, no-op handlers ({options.tasks} tasks; with: {', '.join(extras) or 'nothing'})"
    )
    print_table(title, rows, ["producer (as the API)", *STAGES, "nats-server"], options.tasks, elapsed)


if __name__ == "__main__":
    main()

"""The floor under task-manager's per-task overhead: a bare 4-stage JetStream pipeline in nats-py.

    python bench/nats_floor.py                 # 3000 tasks, 4 stage processes, one nats-server
    python bench/nats_floor.py --tasks 5000 --no-kv

No project code runs: each stage is a separate process that does only what any durable pipeline stage
on JetStream must do per message (a pull of one message, a compare-and-set of the task's state in a KV
bucket, a publish of the next stage's message awaiting the stream's ack, an ack), with a payload of a few
bytes and no HTTP, S3, logging, events or image work; uvloop, as the services run. The producer creates
each task's KV entry and publishes the first message, as the API does. It prints the CPU ms per task of
every process and the tasks/s of the burst, to compare with bench/runtime_floor.py (the project's stage
runtime on the same harness) and `bench/samework.py --size 16x12` (bench/README.md, "The floor").
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import nats
import uvloop
from nats.js.api import ConsumerConfig, StreamConfig

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers.nats import start_nats  # noqa: E402

STAGES = ("fetch", "classify", "upscale", "upload")
STREAM = "FLOOR"
BUCKET = "floor_state"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


async def setup(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["floor.>"]))
    for stage in STAGES:
        await js.add_consumer(
            STREAM, ConsumerConfig(durable_name=stage, filter_subject=f"floor.{stage}.*", ack_wait=30)
        )
    await js.create_key_value(bucket=BUCKET)
    await nc.close()


async def stage_loop(url: str, index: int, tasks: int, use_kv: bool) -> float:
    stage = STAGES[index]
    following = STAGES[index + 1] if index + 1 < len(STAGES) else None
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.key_value(BUCKET)
    sub = await js.pull_subscribe_bind(durable=stage, stream=STREAM)
    began = time.process_time()
    done = 0
    while done < tasks:
        try:
            [msg] = await sub.fetch(1, timeout=5)
        except TimeoutError:
            continue
        task_id = msg.subject.rsplit(".", 1)[1]
        if use_kv:
            entry = await kv.get(task_id)
            await kv.update(task_id, entry.value + stage.encode()[:1], last=entry.revision)
        if following is not None:
            await js.publish(f"floor.{following}.{task_id}", msg.data)
        await msg.ack()
        done += 1
    await nc.flush()
    spent = time.process_time() - began
    await nc.close()
    return spent


def run_stage(url: str, index: int, tasks: int, use_kv: bool, spent: multiprocessing.Queue) -> None:
    spent.put((STAGES[index], uvloop.run(stage_loop(url, index, tasks, use_kv))))


async def produce(url: str, tasks: int, use_kv: bool) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.key_value(BUCKET)
    began = time.process_time()
    for n in range(tasks):
        if use_kv:
            await kv.create(f"t{n}", b"P")
        await js.publish(f"floor.fetch.t{n}", b"x" * 64)
    await nc.flush()
    spent = time.process_time() - began
    await nc.close()
    return spent


def run_producer(url: str, tasks: int, use_kv: bool, spent: multiprocessing.Queue) -> None:
    spent.put(("producer (as the API)", uvloop.run(produce(url, tasks, use_kv))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--no-kv", action="store_true", help="leave out the state bucket")
    args = parser.parse_args()
    use_kv = not args.no_kv
    with tempfile.TemporaryDirectory() as store:
        server = start_nats(Path(store))
        try:
            asyncio.run(setup(server.url))
            spent: multiprocessing.Queue = multiprocessing.Queue()
            stages = [
                multiprocessing.Process(target=run_stage, args=(server.url, i, args.tasks, use_kv, spent))
                for i in range(len(STAGES))
            ]
            for process in stages:
                process.start()
            time.sleep(1.0)  # the stage processes' imports and connections are not the pipeline's cost
            server_before = cpu_s(server.process.pid)
            began = time.monotonic()
            producer = multiprocessing.Process(target=run_producer, args=(server.url, args.tasks, use_kv, spent))
            producer.start()
            rows = dict(spent.get(timeout=600) for _ in range(len(STAGES) + 1))
            elapsed = time.monotonic() - began
            rows["nats-server"] = cpu_s(server.process.pid) - server_before
            for process in [*stages, producer]:
                process.join()
        finally:
            server.stop()
    names = ["producer (as the API)", *STAGES, "nats-server"]
    print_table(
        f"Bare 4-stage JetStream pipeline in nats-py ({args.tasks} tasks, KV state: {use_kv})",
        rows,
        names,
        args.tasks,
        elapsed,
    )


def print_table(title: str, spent_s: dict[str, float], names: list[str], tasks: int, elapsed_s: float) -> None:
    print(f"\n## {title}\n\n| process | CPU ms per task |\n| --- | --- |")
    for name in names:
        print(f"| {name} | {spent_s[name] * 1000 / tasks:.2f} |")
    print(f"| **total** | **{sum(spent_s.values()) * 1000 / tasks:.2f}** |")
    print(f"\n{tasks / elapsed_s:.0f} tasks/s through all four stages")


if __name__ == "__main__":
    main()

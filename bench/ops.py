"""What each NATS call the pipeline makes costs: client CPU, nats-server CPU and wall time per call.

    python bench/ops.py [--calls 3000] [--parallel 16]

One process, its own nats-server (temp store), the project's own topology (`shared.nats.declare`),
payloads the size the pipeline uses (a TaskStatus JSON, a TaskMessage, a 3.3 KB PNG). Each row runs
`--calls` calls, `--parallel` at a time, and reports CPU microseconds per call for this process (the
nats-py side: what a stage pays) and for nats-server, which on a small machine share the same cores.
Multiplied by the calls per task (bench/README.md), they say where a task's CPU goes, without the
noise of a whole-system run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nats.js.api import KeyValueConfig, StorageType  # noqa: E402

from bench.harness import cpu_seconds  # noqa: E402
from bench.load import tiny_png  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.messages import PIPELINE, TaskMessage  # noqa: E402
from shared.nats import connect, declare  # noqa: E402
from shared.taskstate.status import TaskStatus  # noqa: E402
from shared.wire import consumer_name, work_stream, work_subject  # noqa: E402
from tests.servers import start_nats  # noqa: E402

Call = Callable[[int], Awaitable[object]]


async def measure(name: str, call: Call, calls: int, parallel: int, server_pid: int) -> dict[str, float | str]:
    gate = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with gate:
            await call(i)

    client0, server0, wall0 = time.process_time(), cpu_seconds(server_pid), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    wall = time.perf_counter() - wall0
    client = (time.process_time() - client0) / calls * 1e6
    server = (cpu_seconds(server_pid) - server0) / calls * 1e6
    return {"call": name, "client_us": client, "server_us": server, "calls_per_s": calls / wall}


async def run(calls: int, parallel: int) -> list[dict[str, float | str]]:
    store = Path(tempfile.mkdtemp(prefix="tm-ops-"))
    server = start_nats(store)
    try:
        settings = Settings(nats_url=server.url)
        nc = await connect(settings, name="ops")
        topo = await declare(nc, settings)
        js, pid = topo.js, server.process.pid
        ids = [str(uuid.uuid4()) for _ in range(calls)]
        status = TaskStatus.new(ids[0], input_url="http://127.0.0.1:1/input.png", output_url="file:///tmp/out/1.png")
        status_json = status.to_json()
        message = TaskMessage(
            task_id=ids[0],
            input_url="http://127.0.0.1:1/input.png",
            output_url="file:///tmp/out/1.png",
            submitted_at=status.submitted_at,
        ).pack()
        png = tiny_png(16)
        direct_kv = await js.create_key_value(
            KeyValueConfig(bucket="OPS_DIRECT", history=1, storage=StorageType.FILE, direct=True)
        )
        blob_kv = await js.create_key_value(
            KeyValueConfig(bucket="OPS_BLOBS", history=1, storage=StorageType.FILE, direct=True)
        )
        revisions: dict[int, int] = {}
        rows = []

        async def kv_create(i: int) -> None:
            revisions[i] = await topo.tasks.create(ids[i], status_json)

        async def kv_update(i: int) -> None:
            revisions[i] = await topo.tasks.update(ids[i], status_json, last=revisions[i])

        async def pull_ack(i: int) -> None:
            (msg,) = await subscription.fetch(1, timeout=5)
            await msg.ack()

        async def obj_put(i: int) -> None:
            await topo.blobs.put(f"{ids[i]}/input", png)

        async def read_direct(i: int) -> None:
            meta_subject = f"$O.TM_BLOBS.M.{base64.urlsafe_b64encode(f'{ids[i]}/input'.encode()).decode()}"
            info = json.loads((await js.get_msg("OBJ_TM_BLOBS", subject=meta_subject, direct=True)).data)
            await js.get_msg("OBJ_TM_BLOBS", seq=1, subject=f"$O.TM_BLOBS.C.{info['nuid']}", direct=True, next=True)

        table: list[tuple[str, Call]] = [
            ("KV create (API)", kv_create),
            ("KV get, STREAM.MSG.GET (now)", lambda i: topo.tasks.get(ids[i])),
            ("KV get, DIRECT.GET (kv-direct)", lambda i: direct_kv.get(ids[i])),
            ("KV update, compare-and-set", kv_update),
            ("TaskStatus from_json + to_json (pydantic)", lambda i: _json_round_trip(status_json)),
            (
                "js.publish, work message",
                lambda i: js.publish(
                    work_subject(5, PIPELINE[1], ids[i]), message, headers={"Nats-Msg-Id": f"{ids[i]}.c"}
                ),
            ),
            ("pull 1 message + ack", pull_ack),
            ("object put 3.3 KB (info + chunk + meta)", obj_put),
            ("object get 3.3 KB (info + ordered consumer)", lambda i: topo.blobs.get(f"{ids[i]}/input")),
            ("object read by direct gets (blobs-direct)", read_direct),
            ("object delete (info + meta + purge)", lambda i: topo.blobs.delete(f"{ids[i]}/input")),
            ("KV put 3.3 KB blob (blobs-kv)", lambda i: blob_kv.put(f"{ids[i]}.input", png)),
            ("KV get 3.3 KB blob, direct (blobs-kv)", lambda i: blob_kv.get(f"{ids[i]}.input")),
            (
                "purge a task's blobs by subject (blobs-kv)",
                lambda i: js.purge_stream("KV_OPS_BLOBS", subject=f"$KV.OPS_BLOBS.{ids[i]}.>"),
            ),
        ]
        subscription = await js.pull_subscribe_bind(consumer_name(PIPELINE[1]), work_stream(5))
        for task_id in ids:
            await direct_kv.create(task_id, status_json)
        for name, call in table:
            # The object store lets ~1000 ordered consumers live at once (nats-server 2.15): pace the gets.
            if name.startswith("object get"):
                for start in range(0, calls, 800):
                    chunk = min(800, calls - start)
                    offset_call: Call = lambda i, s=start, c=call: c(s + i)  # noqa: E731
                    rows.append(await measure(name, offset_call, chunk, parallel, pid))
                    await asyncio.sleep(6)
                rows[-1] = _merge([r for r in rows if r["call"] == name])
                rows = [r for r in rows if r["call"] != name] + [rows[-1]]
                continue
            # One fetch at a time: concurrent fetches on one subscription would take each other's replies.
            rows.append(await measure(name, call, calls, 1 if name.startswith("pull") else parallel, pid))
        await nc.close()
        return rows
    finally:
        server.stop()
        shutil.rmtree(store, ignore_errors=True)


async def _json_round_trip(data: bytes) -> None:
    TaskStatus.from_json(data).to_json()


def _merge(rows: list[dict[str, float | str]]) -> dict[str, float | str]:
    merged: dict[str, float | str] = {"call": rows[0]["call"]}
    for key in ("client_us", "server_us", "calls_per_s"):
        merged[key] = sum(float(r[key]) for r in rows) / len(rows)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--parallel", type=int, default=16)
    args = parser.parse_args()
    rows = asyncio.run(run(args.calls, args.parallel))
    width = max(len(str(r["call"])) for r in rows)
    print(f"{'call':<{width}}  client CPU us  nats-server CPU us  calls/s ({args.parallel} in flight)")
    for r in rows:
        print(f"{r['call']:<{width}}  {r['client_us']:>12.0f}  {r['server_us']:>18.0f}  {r['calls_per_s']:>8.0f}")
    print(f"(machine: {os.cpu_count()} CPUs; run on a quiet machine, other processes skew the wall figures only)")


if __name__ == "__main__":
    main()

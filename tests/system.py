"""The system under test: the API and the stage services as real processes (`python -m services.X`).

Tests start exactly the services they need against the real NATS, S3 and HTTP servers, and wait
for readiness on events: a stage is ready when its heartbeat key appears in the workers bucket, the
API when /health answers 200.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import nats
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError, NotFoundError

from shared.messages import PRIORITIES
from shared.taskstate.status import TaskStatus
from shared.wire import EVENTS_SUBJECTS, TASKS_BUCKET, WORKERS_BUCKET, work_stream
from tests.servers import start_nats

STAGE_SERVICES = ("fetcher", "classifier", "upscaler", "uploader")
NOTIFIER = "notifier"  # webhooks; not a stage, but ready the same way (its heartbeat): System.start(NOTIFIER)
ROOT = Path(__file__).resolve().parents[1]
# TM_FILE_ROOT of every system under test: pytest's tmp_path directories lie under it, so tests read
# and write file:// URLs in their own tmp_path (tests/security keeps /etc and the like outside it).
FILE_ROOT = Path(tempfile.gettempdir()).resolve()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class System:
    def __init__(self, nats_url: str, log_dir: Path, env: dict[str, str]) -> None:
        self.nats_url = nats_url
        self.log_dir = log_dir
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            **os.environ,
            "NATS_URL": nats_url,
            "TM_API_HOST": "127.0.0.1",
            "TM_API_PORT": str(self.api_port),
            "TM_FETCH_ALLOW_PRIVATE_NETWORKS": "true",
            "TM_FILE_ROOT": str(FILE_ROOT),
            "TM_HEARTBEAT_S": "1",
            # Tests submit in bursts on purpose; the rate-limit tests set their own values.
            "TM_RATE_LIMIT_PER_S": "1000",
            "TM_RATE_LIMIT_BURST": "1000",
            # Tests present wrong keys on purpose; the throttling test sets its own budget.
            "TM_AUTH_FAILURE_BURST": "100000",
            **env,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(self, service: str, *, name: str | None = None, **env: str) -> subprocess.Popen[bytes]:
        """Start one process of `service`; `name` (default: the service's) keys it in `processes` and
        names its log, so several instances of a stage can run side by side."""
        name = name or service
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = process
        return process

    async def start(
        self, *services: str, timeout_s: float = 60, instances: Mapping[str, int] | None = None, **env: str
    ) -> None:
        """Start services and wait until each is ready; `instances` runs several processes of a service
        (`{"fetcher": 3}`: `fetcher`, `fetcher-2`, `fetcher-3`), all on the same durable consumers."""
        before = await self._worker_pids()
        stage_pids = set()
        for service in services:
            for i in range(1, (instances or {}).get(service, 1) + 1):
                process = self.spawn(service, name=service if i == 1 else f"{service}-{i}", **env)
                if service != "api":
                    stage_pids.add(process.pid)
        waits = [self._wait_workers(stage_pids - before, timeout_s)]
        if "api" in services:
            waits.append(self._wait_api(timeout_s))
        try:
            await asyncio.gather(*waits)
        except TimeoutError as exc:
            raise AssertionError(f"services not ready in {timeout_s}s:\n{self.logs()}") from exc

    async def _worker_pids(self) -> set[int]:
        return {record["pid"] for record in await worker_records(self.nats_url)}

    async def wait_heartbeats(self, pids: set[int], timeout_s: float) -> None:
        """Until a heartbeat of each worker process in `pids` is in the workers bucket."""
        await self._wait_workers(pids, timeout_s)

    async def _wait_workers(self, pids: set[int], timeout_s: float) -> None:
        if not pids:
            return
        nc = await nats.connect(self.nats_url)
        try:
            async with asyncio.timeout(timeout_s):
                js = nc.jetstream()
                while True:  # the bucket is created by the first service that starts
                    try:
                        kv = await js.key_value(WORKERS_BUCKET)
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
                watcher = await kv.watchall()
                waiting = set(pids)
                async for entry in watcher:
                    if entry is not None and entry.value:
                        waiting.discard(json.loads(entry.value)["pid"])
                    if not waiting:
                        break
                await watcher.stop()
        finally:
            await nc.close()

    async def _wait_api(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient() as client:
            while True:
                if self.processes["api"].poll() is not None:
                    raise AssertionError(f"api exited:\n{self.logs()}")
                try:
                    if (await client.get(f"{self.api_url}/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)  # nothing to await on an HTTP server coming up

    def stop(self, *services: str, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        for service in services or list(self.processes):
            process = self.processes.pop(service, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(sig)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self, tail: int = 40) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)


@contextmanager
def system_on_own_nats(directory: Path, env: dict[str, str], *services: str) -> Iterator[System]:
    """A System with `services` started on a NATS server of its own (under `directory`); both stop at exit."""
    server = start_nats(directory / "nats")
    system = System(server.url, directory / "logs", env)
    try:
        asyncio.run(system.start(*services))
        yield system
    finally:
        system.stop()
        server.stop()


@asynccontextmanager
async def started_on_own_nats(directory: Path, env: dict[str, str], *services: str) -> AsyncIterator[System]:
    """system_on_own_nats for a test already in an event loop."""
    server = start_nats(directory / "nats")
    system = System(server.url, directory / "logs", env)
    try:
        await system.start(*services)
        yield system
    finally:
        system.stop()
        server.stop()


async def store_statuses(nats_url: str, statuses: list[TaskStatus]) -> None:
    """Write task entries straight into the task bucket, as the pipeline leaves them."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(TASKS_BUCKET)
        for status in statuses:
            await kv.put(status.task_id, status.to_json())
    finally:
        await nc.close()


async def wait_terminal(nats_url: str, task_ids: list[str], timeout_s: float = 60) -> dict[str, dict]:
    """The terminal status of each task, read from the task events stream (replayed from the
    start, so events published before this call count too)."""
    wanted = set(task_ids)
    found: dict[str, dict] = {}
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(EVENTS_SUBJECTS, ordered_consumer=True)
        async with asyncio.timeout(timeout_s):
            while wanted - found.keys():
                msg = await sub.next_msg(timeout=timeout_s)
                status = json.loads(msg.data)
                if status["task_id"] in wanted:
                    found[status["task_id"]] = status
    except TimeoutError as exc:
        missing = sorted(wanted - found.keys())
        raise AssertionError(f"{len(missing)} task(s) not terminal in {timeout_s}s: {missing[:5]}") from exc
    finally:
        await nc.close()
    return found


async def run_ended(nats_url: str, task_id: str, run: int, timeout_s: float = 60) -> dict:
    """The terminal status of one run of a task, from the task events stream (replayed from its start)."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(EVENTS_SUBJECTS, ordered_consumer=True)
        async with asyncio.timeout(timeout_s):
            while True:
                status = json.loads((await sub.next_msg(timeout=timeout_s)).data)
                if (status["task_id"], status["run"]) == (task_id, run):
                    return status
    finally:
        await nc.close()


async def queued_messages(nats_url: str) -> int:
    """Messages stored in all the work queues (every priority stream)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        return sum([(await js.stream_info(work_stream(p))).state.messages for p in PRIORITIES])
    finally:
        await nc.close()


async def worker_records(nats_url: str) -> list[dict]:
    """The heartbeat record of every live process (none before the first service made the bucket)."""
    nc = await nats.connect(nats_url)
    try:
        try:
            kv = await nc.jetstream().key_value(WORKERS_BUCKET)
            keys = await kv.keys()
        except (NotFoundError, NoKeysError):
            return []
        records = []
        for key in keys:
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):  # withdrawn or expired since the listing
                continue
            if entry.value:
                records.append(json.loads(entry.value))
        return records
    finally:
        await nc.close()

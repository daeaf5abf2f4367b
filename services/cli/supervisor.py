"""`task-manager up`: NATS (unless NATS_URL is given), S3 (unless one is configured: `s3local`), the API,
the four stages and the webhook notifier as processes, and the default models' weights when they are missing.

Each service is its own process, restarted with backoff when it dies; SIGINT/SIGTERM stop the
services first (they drain their work), then the embedded S3 server, and the embedded NATS server last.
Missing weights download in the background (`modelfetch`) while the stack serves; tasks that need them
wait for them a while.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog
from pydantic import ValidationError

from services.cli import modelfetch, s3local
from shared.config import Settings

SERVICES = ("api", "fetcher", "classifier", "upscaler", "uploader", "notifier")
STOP_GRACE_S = 30.0
log = structlog.get_logger()


def find_binary(name: str) -> str:
    """A binary installed by a PyPI package lands next to the interpreter; else use PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the project (pip install -e .) or put {name} on PATH")
    return found


async def start_nats(data_dir: Path, port: int) -> asyncio.subprocess.Process:
    store = data_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        find_binary("nats-server"), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(15):
            while True:
                line = (await process.stderr.readline()).decode()
                if not line:
                    raise SystemExit("nats-server exited during start-up:\n" + "".join(seen))
                seen.append(line)
                if "Server is ready" in line:
                    break
    except TimeoutError:
        process.kill()
        raise SystemExit("nats-server did not become ready in 15 s:\n" + "".join(seen)) from None
    asyncio.create_task(_drain(process.stderr))
    return process


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


@dataclass
class Supervised:
    name: str
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(sys.executable, "-m", f"services.{self.name}", env=self.env)
        self.started_at = time.monotonic()

    async def keep_running(self, stopping: asyncio.Event) -> None:
        delay = 1.0
        while not stopping.is_set():
            await self.start()
            assert self.process is not None
            code = await self.process.wait()
            if stopping.is_set():
                return
            if time.monotonic() - self.started_at > 60:
                delay = 1.0  # it ran fine for a while: this is a fresh failure
            self.restarts += 1
            log.error(
                "service_exited",
                service=self.name,
                exit_code=code,
                restart_in_s=delay,
                restarts=self.restarts,
            )
            try:
                await asyncio.wait_for(stopping.wait(), timeout=delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 30.0)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)


async def wait_healthy(url: str, timeout_s: float) -> bool:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if (await client.get(url, timeout=2)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    return False


def choose_file_root(chosen: str | None, data_dir: Path) -> str:
    """TM_FILE_ROOT for the services: `--file-root`, else the environment's, else DATA_DIR/files (made here).

    Not the working directory: a file:// output is written wherever a submitter names inside the root,
    so the default is a directory of task-manager's own. An empty value keeps file:// off.
    """
    if chosen is None:
        chosen = os.environ.get("TM_FILE_ROOT")
    if chosen is None:
        default = data_dir / "files"
        default.mkdir(parents=True, exist_ok=True)
        chosen = str(default)
    return str(Path(chosen).resolve()) if chosen else ""


async def run(
    host: str, port: int, data_dir: Path, nats_port: int, file_root: str | None = None, s3_port: int = 8333
) -> int:
    env = dict(os.environ, TM_API_HOST=host, TM_API_PORT=str(port))
    env["TM_FILE_ROOT"] = choose_file_root(file_root, data_dir)
    try:  # the services read the same settings: refuse a bad value once, here, rather than in six crash loops
        settings = Settings(file_root=Path(env["TM_FILE_ROOT"]) if env["TM_FILE_ROOT"] else None)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"task-manager up: invalid settings: {errors}") from None
    downloads = modelfetch.start(settings)  # in the background: nothing below waits for it
    nats_process = None
    if "NATS_URL" not in os.environ:
        nats_process = await start_nats(data_dir, nats_port)
        env["NATS_URL"] = f"nats://127.0.0.1:{nats_port}"
    log.info("nats", url=env["NATS_URL"], embedded=nats_process is not None)
    local_s3 = None
    if not s3local.configured_elsewhere():
        try:
            local_s3 = await s3local.start(data_dir, s3_port, find_binary("weed"))
        except SystemExit:
            if nats_process is not None:  # not left running without its supervisor
                nats_process.terminate()
                await nats_process.wait()
            raise
        env.update(local_s3.env())
        log.info("s3", endpoint=local_s3.endpoint_url, embedded=True, data=str(data_dir / "s3"),
                 read_with=f". {local_s3.env_file} && aws --endpoint-url {local_s3.endpoint_url} s3 ls")  # fmt: skip
    else:
        log.info("s3", endpoint=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"), embedded=False)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)

    services = [Supervised(name, env) for name in SERVICES]
    runners = [asyncio.create_task(s.keep_running(stopping)) for s in services]
    health_url = f"http://{host}:{port}/health"
    if await wait_healthy(health_url, 60):
        log.info("task_manager_up", api=f"http://{host}:{port}", docs=f"http://{host}:{port}/docs",
                 dashboard=f"http://{host}:{port}/dashboard", file_root=env["TM_FILE_ROOT"] or None)  # fmt: skip
    else:
        log.error("api_not_healthy", url=health_url)

    await stopping.wait()
    log.info("stopping", services=len(services))
    if downloads is not None:
        downloads.stop()  # what came so far stays in the part files; the next `up` continues them
    for service in services:
        service.signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*runners), timeout=STOP_GRACE_S)
    except TimeoutError:
        for service in services:
            service.signal(signal.SIGKILL)
        await asyncio.gather(*runners, return_exceptions=True)
    for service in services:
        if service.process is not None:
            await service.process.wait()
    if local_s3 is not None:
        await local_s3.stop()
    if nats_process is not None:
        nats_process.terminate()
        await nats_process.wait()
    log.info("stopped")
    return 0

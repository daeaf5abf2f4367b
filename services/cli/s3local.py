"""`up`'s embedded S3: a SeaweedFS `weed mini` under DATA_DIR/s3, when no S3 is configured.

As with NATS, a first `task-manager up` needs nothing else running: `s3://bucket/key` outputs land in a
local server whose objects a user can list and download. Any S3 setting in the environment (an endpoint,
keys, a profile, a credentials file) means the operator chose an S3, and nothing is started.

The keys are made once and kept in DATA_DIR/s3/env (0600), so the objects of one `up` are readable by
the next. SeaweedFS creates a missing bucket on the first upload for this admin identity, so a task's
bucket needs no set-up. Only the S3 port is fixed (`--s3-port`); the inner components take free ports.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shlex
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
GRPC_PORT_OFFSET = 10_000  # SeaweedFS puts each component's gRPC port at its HTTP port + 10000
REGION = "us-east-1"
# Any of these says the operator chose an S3 (or AWS itself): the embedded one stays off.
S3_SETTINGS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE")


def configured_elsewhere(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment (or boto's shared credentials file) already names an S3 to use."""
    if any(environ.get(name) for name in S3_SETTINGS):
        return True
    credentials = environ.get("AWS_SHARED_CREDENTIALS_FILE") or str(Path.home() / ".aws" / "credentials")
    return Path(credentials).is_file()


@dataclass
class LocalS3:
    """A running embedded S3: the variables boto reads to reach it, and the process to stop."""

    endpoint_url: str
    access_key: str
    secret_key: str
    env_file: Path
    process: asyncio.subprocess.Process
    ports: tuple[int, ...]

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    async def stop(self) -> None:
        """SIGTERM, bounded wait (then SIGKILL); then the unix sockets weed leaves in /tmp for its ports."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        for port in (*self.ports, *(p + GRPC_PORT_OFFSET for p in self.ports)):
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def _keys(env_file: Path) -> tuple[str, str]:
    """The kept keys from DATA_DIR/s3/env, else fresh ones (written by `_write_env`)."""
    if env_file.is_file():
        values = dict(
            line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
        )
        access, secret = values.get("AWS_ACCESS_KEY_ID"), values.get("AWS_SECRET_ACCESS_KEY")
        if access and secret:
            return shlex.split(access)[0], shlex.split(secret)[0]
    return "task-manager", secrets.token_hex(20)


def _write_env(env_file: Path, env: dict[str, str]) -> None:
    """A shell file a user sources to reach the server: `. DATA_DIR/s3/env && aws s3 ls`."""
    text = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As Go's listeners do: a connection of a previous run in TIME_WAIT does not make the port taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int, taken: set[int]) -> list[int]:
    """HTTP ports whose gRPC twin (+10000) is free too, none in `taken` (or its twins)."""
    chosen: list[int] = []
    for _ in range(1000):
        port = random.randrange(20_000, 65_535 - GRPC_PORT_OFFSET)
        used = {p for c in (*chosen, *taken) for p in (c, c + GRPC_PORT_OFFSET)}
        if port in used or port + GRPC_PORT_OFFSET in used:
            continue
        if _is_free(port) and _is_free(port + GRPC_PORT_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise SystemExit("embedded S3: no free ports for SeaweedFS")


async def start(data_dir: Path, s3_port: int, weed: str) -> LocalS3:
    """Start `weed mini` on 127.0.0.1:`s3_port` with its data in DATA_DIR/s3; return once S3 answers."""
    store = data_dir / "s3"
    store.mkdir(parents=True, exist_ok=True)
    env_file = store / "env"
    access_key, secret_key = _keys(env_file)
    if not (_is_free(s3_port) and _is_free(s3_port + GRPC_PORT_OFFSET)):
        raise SystemExit(
            f"embedded S3: port {s3_port} (or its gRPC twin {s3_port + GRPC_PORT_OFFSET}) is taken: "
            "choose another with --s3-port, or set AWS_ENDPOINT_URL_S3 and keys to use an S3 of your own"
        )
    master, volume, filer, admin = _free_ports(4, {s3_port})
    args = [
        weed, "mini", f"-dir={store}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3_port}",
        f"-admin.port={admin}", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed ports by default (9101 is often taken); unused here
        "-s3.autoCreateBucket=true",  # a task's bucket is made on its first upload
    ]  # fmt: skip
    # With these two set, weed mini creates that (admin) identity and checks every request's signature.
    child_env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = store / "weed.log"
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT, env=child_env
        )
    server = LocalS3(f"http://127.0.0.1:{s3_port}", access_key, secret_key, env_file, process,
                     (master, volume, filer, s3_port, admin))  # fmt: skip
    try:
        await _wait_ready(server)
    except BaseException as exc:
        await server.stop()
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"embedded S3 (SeaweedFS) did not start ({exc}); {log_path}:\n{tail}") from None
    _write_env(env_file, server.env())
    return server


async def _wait_ready(server: LocalS3) -> None:
    """Until ListBuckets succeeds with the keys (no log line says the identity is loaded), within the bound."""
    import aioboto3  # here: `up` without the embedded S3 never loads boto
    from aiobotocore.config import AioConfig

    config = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5)
    session = aioboto3.Session(
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key, region_name=REGION
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with session.client("s3", endpoint_url=server.endpoint_url, config=config) as client:
        while True:
            try:
                await client.list_buckets()
                return
            except Exception as exc:  # any failure means "not ready yet", until the deadline or its exit
                if server.process.returncode is not None:
                    raise RuntimeError(f"weed exited with {server.process.returncode}") from exc
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready in {READY_TIMEOUT_S:g} s: {exc}") from exc
            await asyncio.sleep(0.2)  # no readiness line to await: poll with a short pause

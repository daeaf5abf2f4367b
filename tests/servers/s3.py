"""SeaweedFS serving S3 with signature checks on, ports chosen at start."""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

from tests.servers.processes import _is_free, _spawn, _terminate, find_binary

S3_READY_TIMEOUT_S = 30.0
GRPC_PORT_OFFSET = 10_000  # SeaweedFS puts each component's gRPC port at its HTTP port + 10000


@dataclass
class S3Server:
    """A SeaweedFS `weed mini` child process serving S3 with signature checks on."""

    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    ports: tuple[int, ...] = ()
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The standard variables boto reads by itself to reach this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, config: Config | None = None):  # type: ignore[no-untyped-def]  # boto3 types are runtime-made
        """A synchronous boto3 S3 client for setting up and checking test data."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config,
        )

    def stop(self) -> None:
        """SIGTERM and wait; then remove the unix sockets it may leave in /tmp for its ports."""
        _terminate(self.process, timeout_s=20.0)
        for port in (*self.ports, *(p + GRPC_PORT_OFFSET for p in self.ports)):
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def _free_http_ports(count: int) -> list[int]:
    """HTTP ports whose gRPC twin (+10000) is also free, all below 65536 once offset."""
    chosen: list[int] = []
    for _ in range(1000):
        port = random.randrange(20_000, 65_535 - GRPC_PORT_OFFSET)
        taken = {p for c in chosen for p in (c, c + GRPC_PORT_OFFSET)}
        if port in taken or port + GRPC_PORT_OFFSET in taken:
            continue
        if _is_free(port) and _is_free(port + GRPC_PORT_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free port pairs for SeaweedFS")


def start_s3(data_dir: Path) -> S3Server:
    """Start `weed mini` on 127.0.0.1 with fresh credentials and wait until ListBuckets succeeds."""
    access_key, secret_key = "tm-test", secrets.token_hex(16)
    master, volume, filer, s3, admin = _free_http_ports(5)
    args = [
        find_binary("weed"), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}",
        f"-admin.port={admin}", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
        # Iceberg and Lance default to fixed ports (9101 is often taken); tests need neither.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        # A missing bucket must stay missing, as on AWS, so the "no such bucket" paths can be tested.
        "-s3.autoCreateBucket=false",
    ]  # fmt: skip
    # With these two set, weed mini creates that identity and checks every request's signature.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = data_dir / "weed.log"
    with log_path.open("wb") as log:
        process = _spawn(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    all_ports = (master, volume, filer, s3, admin)
    server = S3Server(f"http://127.0.0.1:{s3}", access_key, secret_key, process, all_ports)
    # One attempt per probe: botocore's own retries would only stretch the bounded wait.
    client = server.client(Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5))
    deadline = time.monotonic() + S3_READY_TIMEOUT_S
    while True:
        try:
            client.list_buckets()
            return server
        except Exception as exc:  # any failure means "not ready yet", until the deadline
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                tail = log_path.read_text(errors="replace")[-4000:]
                raise RuntimeError(f"SeaweedFS not ready ({exc}); log:\n{tail}") from exc
        # No readiness line covers the S3 identity being loaded, so poll with a short pause.
        time.sleep(0.1)

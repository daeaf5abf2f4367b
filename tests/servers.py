"""Real servers for the test suite: nats-server, SeaweedFS (S3) and a small static HTTP server.

Each server is a child process (or a thread) on 127.0.0.1 with ports chosen at start, so test runs
never collide with each other or with a developer's own services. Every wait is bounded and a failed
start raises with the server's log, which is the first thing needed to understand it.
"""

from __future__ import annotations

import atexit
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote

import boto3
from botocore.config import Config

__all__ = ["NatsCluster", "NatsServer", "S3Server", "StaticHTTPServer", "start_nats", "start_nats_cluster", "start_s3"]

READY_TIMEOUT_S = 10.0
CLUSTER_READY_TIMEOUT_S = 30.0  # the first JetStream meta-leader election alone takes ~5 s
S3_READY_TIMEOUT_S = 30.0
GRPC_PORT_OFFSET = 10_000  # SeaweedFS puts each component's gRPC port at its HTTP port + 10000

# Anything still running when the interpreter exits (a crashed session, Ctrl-C) is killed here;
# the fixtures stop their servers first in the normal case.
_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_live):
        if process.poll() is None:
            process.kill()


def find_binary(name: str) -> str:
    """The path of `name` in the venv running the tests (where the PyPI packages put it), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _spawn(args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    _live.add(process)
    return process


def _terminate(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
    _live.discard(process)


class _LogWatcher:
    """Drains a child's output on a thread (so the pipe never fills) and lets callers await a line."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        threading.Thread(target=self._drain, args=(stream,), daemon=True).start()

    def _drain(self, stream: Iterable[bytes]) -> None:
        for raw in stream:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first log line matching `pattern`; RuntimeError with the log if it does not come in time."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    log = "\n".join(self.lines[-40:])
                    why = "exited" if self._closed else f"not seen within {timeout_s}s"
                    raise RuntimeError(f"{pattern!r} {why}; log:\n{log}")
                self._changed.wait(left)


@dataclass
class NatsServer:
    """A `nats-server -js` child process; `restart()` brings it back on the same port and store."""

    url: str
    port: int
    store_dir: Path
    process: subprocess.Popen[bytes]
    extra_args: tuple[str, ...] = ()
    log: _LogWatcher | None = field(default=None, repr=False)

    def stop(self) -> None:
        """SIGTERM (a clean JetStream shutdown) and wait for the exit."""
        _terminate(self.process)

    def kill(self) -> None:
        """SIGKILL: a crash, as far as JetStream's store is concerned."""
        self.process.kill()
        self.process.wait(READY_TIMEOUT_S)
        _live.discard(self.process)

    def restart(self) -> None:
        """Stop if running, then start again with the same port and store directory."""
        self.stop()
        fresh = start_nats(self.store_dir, self.port, self.extra_args)
        self.process, self.log = fresh.process, fresh.log


def start_nats(store_dir: Path, port: int | None = None, extra_args: Iterable[str] = ()) -> NatsServer:
    """Start nats-server with JetStream on 127.0.0.1 (a random port unless given) and wait until ready."""
    extra = tuple(extra_args)
    args = [find_binary("nats-server"), "-js", "-sd", str(store_dir), "-a", "127.0.0.1"]
    args += ["-p", str(port if port is not None else -1), *extra]
    process = _spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    log = _LogWatcher(process.stderr)
    try:
        log.wait_for(r"Server is ready", READY_TIMEOUT_S)
        actual = int(log.wait_for(r"Listening for client connections on [^\s]*:(\d+)", 0).group(1))
    except RuntimeError:
        _terminate(process)
        raise
    return NatsServer(f"nats://127.0.0.1:{actual}", actual, store_dir, process, extra, log)


@dataclass
class NatsCluster:
    """`size` clustered nats-server nodes on loopback; `kill(i)`/`restart(i)` act on one node."""

    nodes: list[NatsServer]
    monitor_ports: list[int]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what services accept in NATS_URL)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, as `nats.connect(servers=...)` takes them."""
        return [node.url for node in self.nodes]

    def kill(self, i: int) -> None:
        """SIGKILL node `i`: a crashed broker, its peers carry on."""
        self.nodes[i].kill()

    def restart(self, i: int, timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> None:
        """Bring node `i` back on its ports and store; return once the cluster is healthy again."""
        self.nodes[i].restart()
        self.wait_healthy(timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_healthy(self, timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> None:
        """Until every running node knows the JetStream meta leader (its log says so) and its
        /healthz is 200, i.e. its streams and consumers are current; RuntimeError otherwise."""
        deadline = time.monotonic() + timeout_s
        running = [
            (node, port)
            for node, port in zip(self.nodes, self.monitor_ports, strict=True)
            if node.process.poll() is None
        ]
        for node, _ in running:
            assert node.log is not None
            node.log.wait_for(_META_LEADER, max(deadline - time.monotonic(), 0))
        for node, port in running:
            while (why := _unhealthy(port)) is not None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node.url} not healthy within {timeout_s}s: {why}")
                time.sleep(0.1)  # the monitoring endpoint has nothing to wait on


_META_LEADER = r"JetStream cluster new metadata leader|Self is new JetStream cluster metadata leader"


def _unhealthy(monitor_port: int) -> str | None:
    """None if the node's /healthz answers 200, else why not."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/healthz", timeout=2) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read().decode(errors='replace')}"
    except OSError as exc:
        return str(exc)


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free now (the servers bind them a moment later)."""
    chosen: list[int] = []
    for _ in range(1000):
        port = random.randrange(20_000, 60_000)
        if port not in chosen and _is_free(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free ports for a NATS cluster")


def start_nats_cluster(base_dir: Path, size: int = 3) -> NatsCluster:
    """Start `size` JetStream nodes (cluster "tm", one store dir each under `base_dir`) routed to
    each other, and wait until they have elected a meta leader and report healthy."""
    ports = _free_ports(3 * size)
    client, route, monitor = ports[:size], ports[size : 2 * size], ports[2 * size :]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in route)
    nodes: list[NatsServer] = []
    try:
        for i in range(size):
            args = [
                "--server_name", f"n{i + 1}", "--cluster_name", "tm",
                "--cluster", f"nats://127.0.0.1:{route[i]}", "--routes", routes,
                "-m", str(monitor[i]),
            ]  # fmt: skip
            nodes.append(start_nats(base_dir / f"n{i + 1}", client[i], args))
        cluster = NatsCluster(nodes, monitor)
        cluster.wait_healthy()
    except RuntimeError:
        for node in nodes:
            node.stop()
        raise
    return cluster


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


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    """Routes: /status/<code>[?retry_after=S], /flaky/<n>/<name>, /slow/<ms>/<name>,
    /redirect/<n>/<name>, /nolength/<name>, /put/<name> (PUT stores, GET reads back), else a file."""

    server: _OwnedHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: pytest shows failures, and the requests are recorded on the owner

    def do_GET(self) -> None:
        self._handle(b"")

    def do_PUT(self) -> None:
        self._handle(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _handle(self, body: bytes) -> None:
        owner = self.server.owner
        path, _, query = self.path.partition("?")
        owner.requests.append(RecordedRequest(self.command, path, dict(self.headers.items()), body))
        match unquote(path).strip("/").split("/"):
            case ["status", code]:
                retry_after = parse_qs(query).get("retry_after")
                extra = {"Retry-After": retry_after[0]} if retry_after else {}
                self._reply(int(code), f"status {code}\n".encode(), extra)
            case ["flaky", n, name]:
                with owner.lock:
                    owner.hits[name] += 1
                    failing = owner.hits[name] <= int(n)
                self._reply(503, b"try later\n") if failing else self._final(name, body)
            case ["slow", ms, name]:
                time.sleep(int(ms) / 1000)  # the delay is the behaviour under test
                self._final(name, body)
            case ["redirect", n, name] if int(n) > 0:
                self._reply(302, b"", {"Location": f"/redirect/{int(n) - 1}/{name}"})
            case ["redirect", _, name]:
                self._final(name, body)
            case ["nolength", name]:
                self._final(name, body, with_length=False)
            case ["put", name] if self.command == "PUT":
                owner.store_put(name, body)
                self._reply(200, b"")
            case ["put", name]:
                stored = owner.puts.get(name)
                self._reply(200, stored) if stored is not None else self._reply(404, b"")
            case _:
                self._final(unquote(path).lstrip("/"), body)

    def _final(self, name: str, body: bytes, *, with_length: bool = True) -> None:
        """A PUT that got through is stored under `name`; a GET serves the file `name` from the root."""
        owner = self.server.owner
        if self.command == "PUT":
            owner.store_put(name, body)
            return self._reply(200, b"")
        file = (owner.root / name).resolve()
        if not file.is_relative_to(owner.root.resolve()) or not file.is_file():
            return self._reply(404, b"not found\n")
        self._reply(200, file.read_bytes(), with_length=with_length)

    def _reply(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, *, with_length: bool = True
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if with_length:  # without it, HTTP/1.0 marks the end of the body by closing the connection
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _OwnedHTTPServer(ThreadingHTTPServer):
    owner: StaticHTTPServer


class StaticHTTPServer:
    """A threaded HTTP server on 127.0.0.1 serving `root`, with special paths for failure cases."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[RecordedRequest] = []
        self.puts: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        # Called with the name of every PUT once it is stored, before the client gets its answer
        # (fault tests use it to act at exactly that moment).
        self.on_put: Callable[[str], None] | None = None
        self.lock = threading.Lock()
        self._httpd = _OwnedHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def store_put(self, name: str, body: bytes) -> None:
        self.puts[name] = body
        if self.on_put is not None:
            self.on_put(name)

    def url(self, path: str) -> str:
        """The absolute URL of `path` on this server."""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add(self, name: str, data: bytes) -> str:
        """Write `data` as file `name` under the root and return its URL."""
        (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        (self.root / name).write_bytes(data)
        return self.url(name)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> StaticHTTPServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

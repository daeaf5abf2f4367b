"""nats-server: one JetStream server or a three-node cluster, ports chosen at start."""

from __future__ import annotations

import random
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.processes import _is_free, _live, _LogWatcher, _spawn, _terminate, find_binary

READY_TIMEOUT_S = 10.0
CLUSTER_READY_TIMEOUT_S = 30.0  # the first JetStream meta-leader election alone takes ~5 s


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

"""Broker failure (issue #3, part 6): a NATS node dies, or the only server restarts, mid-run.

Each scenario submits TASKS tasks through the API while the fault happens, then checks every task:
exactly one terminal event, SUCCESS, exactly one output (a PUT to the test HTTP server, which
records every request, so a second upload of a key is seen even though it overwrites the first:
none is a lost task, more than one a duplicated one), and nothing left in the work queues.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.errors import KeyNotFoundError

from shared.messages import EVENTS_STREAM, EVENTS_SUBJECTS, PRIORITIES, TASKS_BUCKET, work_stream
from tests.conftest import system_env
from tests.e2e.images import photo
from tests.servers import NatsCluster, NatsServer, S3Server, StaticHTTPServer, start_nats, start_nats_cluster
from tests.system import STAGE_SERVICES, System

pytestmark = pytest.mark.faults

TASK = "image_super_resolution_pipeline"
TASKS = 120
BATCH = 10  # submissions in flight at once
BUDGET_S = 90.0  # one scenario, from the first submission to the last check
SERVICES = ("api", *STAGE_SERVICES)
# Anything delivered but never acknowledged (its worker's broker died) comes back within seconds.
FAULT_ENV = {"TM_ACK_WAIT_S": "5"}


@dataclass
class Run:
    """One scenario's submissions and what the test observed of them."""

    name: str
    system: System
    servers: list[str]  # client URLs for the test's own connections (every node of a cluster)
    http_server: StaticHTTPServer
    prefix: str = field(default_factory=lambda: f"fault-{uuid.uuid4().hex[:12]}")
    task_ids: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # task id -> output name on the HTTP server
    retried_503: int = 0
    began: float = field(default_factory=time.monotonic)
    refused: asyncio.Event = field(default_factory=asyncio.Event)  # set on every 503
    _accepted: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def deadline(self) -> float:
        return self.began + BUDGET_S

    def left_s(self, floor_s: float = 5.0) -> float:
        return max(self.deadline - time.monotonic(), floor_s)

    def output_name(self, n: int) -> str:
        return f"{self.prefix}-{n}.png"

    async def accept(self, task_id: str, output: str) -> None:
        async with self._accepted:
            self.task_ids.append(task_id)
            self.outputs[task_id] = output
            self._accepted.notify_all()

    async def accepted(self, count: int) -> None:
        """Until `count` submissions have been accepted (the fault scripts' cue)."""
        async with asyncio.timeout(self.left_s()), self._accepted:
            await self._accepted.wait_for(lambda: len(self.task_ids) >= count)


async def submit_one(run: Run, api: httpx.AsyncClient, source: str, n: int) -> None:
    """Submit task `n`; a 503 (nothing was queued) is retried, as a client would, and counted."""
    body = {
        "task_name": TASK,
        "args": [source, run.http_server.url(f"put/{run.output_name(n)}")],
        "priority": PRIORITIES[n % len(PRIORITIES)],
    }
    while True:
        response = await api.post("/api/v1/tasks", json=body)
        if response.status_code == 202:
            await run.accept(response.json()["task_id"], run.output_name(n))
            return
        assert response.status_code == 503, f"submission {n}: {response.status_code} {response.text}"
        run.retried_503 += 1
        run.refused.set()
        assert time.monotonic() < run.deadline, f"submission {n} still refused after {BUDGET_S}s"
        await asyncio.sleep(0.2)  # a client's back-off before it retries, not a synchronisation


async def submit_all(run: Run, source: str) -> None:
    async with httpx.AsyncClient(base_url=run.system.api_url, timeout=30) as api:
        for start in range(0, TASKS, BATCH):
            await asyncio.gather(*(submit_one(run, api, source, n) for n in range(start, min(start + BATCH, TASKS))))


async def terminal_events(run: Run) -> dict[str, list[str]]:
    """Every terminal state published for each task, replayed from the events stream: wait (within
    the budget) until each task has one, then read the rest of the stream to catch second ones."""
    wanted = set(run.task_ids)
    seen: dict[str, list[str]] = defaultdict(list)
    nc = await nats.connect(servers=run.servers)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(EVENTS_SUBJECTS, ordered_consumer=True)
        last_seq = 0

        async def read_one() -> None:
            nonlocal last_seq
            msg = await sub.next_msg(timeout=run.left_s(1.0))
            last_seq = msg.metadata.sequence.stream
            status = json.loads(msg.data)
            if status["task_id"] in wanted:
                seen[status["task_id"]].append(status["state"])

        try:
            async with asyncio.timeout(run.left_s()):
                while wanted - seen.keys():
                    await read_one()
            stored = (await js.stream_info(EVENTS_STREAM)).state.last_seq
            async with asyncio.timeout(10):
                while last_seq < stored:
                    await read_one()
        except TimeoutError:
            pass  # what is missing is reported as lost
    finally:
        await nc.close()
    return seen


async def final_states(run: Run) -> dict[str, str]:
    """Each task's state in the KV bucket (what GET returns); 'missing' if it has no entry."""
    nc = await nats.connect(servers=run.servers)
    try:
        kv = await nc.jetstream().key_value(TASKS_BUCKET)
        states = {}
        for task_id in run.task_ids:
            try:
                entry = await kv.get(task_id)
                states[task_id] = json.loads(entry.value or b"{}").get("state", "missing")
            except KeyNotFoundError:
                states[task_id] = "missing"
        return states
    finally:
        await nc.close()


async def queued_messages(run: Run, timeout_s: float = 20.0) -> dict[str, int]:
    """Messages left in the work streams once the last acks are in (an ack lost with a broker
    comes back after the ack wait and is then dropped): {} when all are empty within `timeout_s`."""
    nc = await nats.connect(servers=run.servers)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout_s
        while True:
            counts = {work_stream(p): (await js.stream_info(work_stream(p))).state.messages for p in PRIORITIES}
            left = {name: count for name, count in counts.items() if count}
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)  # acks remove messages without any event a client can await
    finally:
        await nc.close()


async def run_scenario(run: Run, fault: Callable[[], Awaitable[None]]) -> None:
    """Submit TASKS tasks while `fault` runs, then check every task and print the scenario line."""
    pids = {name: process.pid for name, process in run.system.processes.items()}
    source = run.http_server.add(f"{run.prefix}/input.png", photo(size=(16, 16)))
    run.began = time.monotonic()
    await asyncio.gather(submit_all(run, source), fault())

    events = await terminal_events(run)
    states = await final_states(run)
    left = await queued_messages(run)
    elapsed = time.monotonic() - run.began
    puts = Counter(
        r.path.removeprefix("/put/")
        for r in list(run.http_server.requests)
        if r.method == "PUT" and r.path.startswith(f"/put/{run.prefix}-")
    )
    put_counts = {task_id: puts[run.outputs[task_id]] for task_id in run.task_ids}
    lost = [t for t in run.task_ids if "SUCCESS" not in events.get(t, []) or put_counts[t] == 0]
    duplicated = [t for t in run.task_ids if put_counts[t] > 1 or len(events.get(t, [])) > 1]

    print(f"\nscenario | tasks | lost | duplicated | time_s\n{run.name} | {len(run.task_ids)} | "
          f"{len(lost)} | {len(duplicated)} | {elapsed:.1f}")  # fmt: skip
    print(f"{run.name}: submissions retried after 503: {run.retried_503}; KV states: {Counter(states.values())}")

    exited = {name: p.returncode for name, p in run.system.processes.items() if p.poll() is not None}
    details = (
        f"lost: {[(t, events.get(t), states[t], put_counts[t]) for t in lost[:5]]}\n"
        f"duplicated: {[(t, events.get(t), put_counts[t]) for t in duplicated[:5]]}\n"
        f"left in work queues: {left}; services exited: {exited}\n{run.system.logs()}"
    )
    assert not exited and {n: p.pid for n, p in run.system.processes.items()} == pids, details
    assert len(run.task_ids) == TASKS, details
    assert (len(lost), len(duplicated)) == (0, 0), details
    assert set(states.values()) == {"SUCCESS"}, details
    assert not left, details


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = start_nats_cluster(tmp_path / "nats")
    yield nodes
    nodes.stop()


@pytest.fixture
def single(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats(tmp_path / "nats")
    yield server
    server.stop()


async def leader_of(servers: list[str], stream: str) -> str:
    nc = await nats.connect(servers=servers)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None and info.cluster.leader is not None, info
        return info.cluster.leader
    finally:
        await nc.close()


async def test_cluster_node_killed(
    cluster: NatsCluster, s3_server: S3Server, model_dir: Path, http_server: StaticHTTPServer, tmp_path: Path
) -> None:
    """SIGKILL the node leading the task-state bucket a third of the way through the submissions,
    restart it at two thirds: submissions keep being accepted, every task succeeds exactly once."""
    env = system_env(s3_server, model_dir, NATS_URL=cluster.url, TM_REPLICAS="3", **FAULT_ENV)
    system = System(cluster.nodes[0].url, tmp_path / "logs", env)  # the harness's own waits; services get all
    try:
        # The API first: it creates the replicated topology alone (five processes racing to create
        # R3 streams can outlast the JetStream API timeout on a small machine; see the report).
        await system.start("api")
        await system.start(*STAGE_SERVICES)
        run = Run("A cluster node killed", system, cluster.urls, http_server)
        # The busiest replicated asset: losing its leader forces an election under load.
        victim = int((await leader_of(cluster.urls, f"KV_{TASKS_BUCKET}")).removeprefix("n")) - 1

        async def fault() -> None:
            await run.accepted(TASKS // 3)
            await asyncio.to_thread(cluster.kill, victim)
            await run.accepted(2 * TASKS // 3)
            await asyncio.to_thread(cluster.restart, victim)

        await run_scenario(run, fault)
    finally:
        system.stop()


async def test_single_server_restart(
    single: NatsServer, s3_server: S3Server, model_dir: Path, http_server: StaticHTTPServer, tmp_path: Path
) -> None:
    """SIGTERM the only nats-server a third of the way through, start it again on the same port and
    store once the API has refused a submission: the services reconnect by themselves (same
    processes) and every accepted task succeeds exactly once."""
    system = System(single.url, tmp_path / "logs", system_env(s3_server, model_dir, **FAULT_ENV))
    try:
        await system.start(*SERVICES)
        run = Run("B single server restart", system, [single.url], http_server)

        async def fault() -> None:
            await run.accepted(TASKS // 3)
            run.refused.clear()
            await asyncio.to_thread(single.stop)
            # Down until a client has seen the outage (the API answers 503 once its NATS requests time out).
            await asyncio.wait_for(run.refused.wait(), timeout=30)
            await asyncio.to_thread(single.restart)

        await run_scenario(run, fault)
    finally:
        system.stop()

"""Broker failure (issue #3, part 6): a NATS node dies, or the only server restarts, mid-run.

Each scenario submits TASKS tasks through the API while the fault happens, then checks every task:
SUCCESS, exactly one output (a PUT to the test HTTP server, which records every request, so a
second upload of a key is seen although it overwrites the first: none is a lost task, more than
one a duplicated one), exactly one terminal event, and nothing left in the work queues.

A scenario runs once per module (a fixture) and the tests below assert on what it observed, so
a guarantee with a known bug is reported apart from those that hold. Two targeted tests pin down
bugs the scenarios hit only now and then: an output written twice when the broker stops right
after the upload, and worker heartbeats that never come back after a single server restarts.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from shared.taskstate.status import utc_now
from shared.wire import TASKS_BUCKET, WORKERS_BUCKET
from tests.conftest import system_env
from tests.e2e.images import photo
from tests.faults.harness import (
    FAULT_ENV,
    TASK,
    TASKS,
    Outcome,
    Run,
    assert_nothing_duplicated,
    assert_nothing_lost,
    assert_one_terminal_event_each,
    run_scenario,
)
from tests.servers import NatsCluster, NatsServer, S3Server, StaticHTTPServer, start_nats, start_nats_cluster
from tests.system import STAGE_SERVICES, System, wait_terminal

pytestmark = pytest.mark.faults


async def leader_of(servers: list[str], stream: str) -> str:
    nc = await nats.connect(servers=servers)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None and info.cluster.leader is not None, info
        return info.cluster.leader
    finally:
        await nc.close()


async def cluster_node_killed(cluster: NatsCluster, system: System, http_server: StaticHTTPServer) -> Outcome:
    # The API first: it creates the replicated topology alone. Five processes declaring R3 streams
    # at once on a fresh cluster leave some requests unanswered and crash (shared/nats.py declare).
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

    return await run_scenario(run, fault)


async def single_server_restart(server: NatsServer, system: System, http_server: StaticHTTPServer) -> Outcome:
    await system.start("api", *STAGE_SERVICES)
    run = Run("B single server restart", system, [server.url], http_server)

    async def fault() -> None:
        await run.accepted(TASKS // 3)
        run.outage_seen.clear()
        await asyncio.to_thread(server.stop)
        # Down until a client has seen the outage (the API answers 503 once its NATS requests time out).
        await asyncio.wait_for(run.outage_seen.wait(), timeout=30)
        await asyncio.to_thread(server.restart)

    return await run_scenario(run, fault)


@pytest.fixture(scope="module")
def killed_node(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, model_dir: Path, http_server: StaticHTTPServer
) -> Iterator[Outcome]:
    """Scenario A: SIGKILL the node leading the task-state bucket a third of the way through the
    submissions, restart it at two thirds; services use all three nodes and three replicas."""
    base = tmp_path_factory.mktemp("cluster-node-killed")
    cluster = start_nats_cluster(base / "nats")
    env = system_env(s3_server, model_dir, NATS_URL=cluster.url, TM_REPLICAS="3", **FAULT_ENV)
    system = System(cluster.nodes[0].url, base / "logs", env)  # the harness's waits use node 0 before the fault
    try:
        yield asyncio.run(cluster_node_killed(cluster, system, http_server))
    finally:
        system.stop()
        cluster.stop()


@pytest.fixture(scope="module")
def restarted_server(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, model_dir: Path, http_server: StaticHTTPServer
) -> Iterator[Outcome]:
    """Scenario B: SIGTERM the only nats-server (file store) a third of the way through, start it
    again on the same port and store once the API has refused a submission."""
    base = tmp_path_factory.mktemp("single-server-restart")
    server = start_nats(base / "nats")
    system = System(server.url, base / "logs", system_env(s3_server, model_dir, **FAULT_ENV))
    try:
        yield asyncio.run(single_server_restart(server, system, http_server))
    finally:
        system.stop()
        server.stop()


def test_cluster_node_killed_loses_nothing(killed_node: Outcome) -> None:
    """Submissions keep being accepted (503s retried), every task succeeds with its output written,
    no queue keeps a message and no service exits."""
    assert_nothing_lost(killed_node)


def test_cluster_node_killed_duplicates_nothing(killed_node: Outcome) -> None:
    assert_nothing_duplicated(killed_node)


def test_cluster_node_killed_publishes_one_terminal_event_per_task(killed_node: Outcome) -> None:
    assert_one_terminal_event_each(killed_node)


def test_single_server_restart_loses_nothing(restarted_server: Outcome) -> None:
    """The services reconnect by themselves (same processes) and every task succeeds."""
    assert_nothing_lost(restarted_server)


def test_single_server_restart_duplicates_nothing(restarted_server: Outcome) -> None:
    assert_nothing_duplicated(restarted_server)


def test_single_server_restart_publishes_one_terminal_event_per_task(restarted_server: Outcome) -> None:
    assert_one_terminal_event_each(restarted_server)


@pytest.fixture
def single(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats(tmp_path / "nats")
    yield server
    server.stop()


async def heartbeat_of(url: str, pid: int, since: str, timeout_s: float) -> None:
    """Until the workers bucket holds a heartbeat from process `pid` written after `since`."""
    nc = await nats.connect(url)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    kv = await nc.jetstream().key_value(WORKERS_BUCKET)
                    break
                except Exception:
                    await asyncio.sleep(0.1)  # no event announces a bucket's creation
            watcher = await kv.watchall(include_history=False)
            async for entry in watcher:
                record = json.loads(entry.value) if entry is not None and entry.value else {}
                if record.get("pid") == pid and record["heartbeat_at"] > since:
                    break
            await watcher.stop()
    finally:
        await nc.close()


async def test_worker_heartbeats_resume_after_single_server_restart(
    single: NatsServer, s3_server: S3Server, model_dir: Path, tmp_path: Path
) -> None:
    system = System(single.url, tmp_path / "logs", system_env(s3_server, model_dir))
    try:
        await system.start("fetcher")
        restarted_at = utc_now()
        await asyncio.to_thread(single.restart)
        await heartbeat_of(single.url, system.processes["fetcher"].pid, restarted_at, timeout_s=15)  # beats every 1 s
        assert system.processes["fetcher"].poll() is None
    finally:
        system.stop()


async def test_output_written_once_when_the_broker_stops_right_after_the_upload(
    single: NatsServer, s3_server: S3Server, model_dir: Path, tmp_path: Path
) -> None:
    """The only nats-server stops the moment the output is stored (before the uploader gets its
    answer) and stays down for OUTAGE_S: the task must still end SUCCESS with one PUT."""
    outage_s = 15.0  # the fault's length: longer than the uploader's two 5 s requests (read, then retry's read)
    with StaticHTTPServer(tmp_path / "www") as http:
        source = http.add("input.png", photo(size=(16, 16)))
        stopped = threading.Event()

        def stop_broker_once(name: str) -> None:
            if not stopped.is_set():
                single.stop()
                stopped.set()

        http.on_put = stop_broker_once
        # No short stall timeout here: a fix that rides out the outage must not be cancelled for it.
        env = system_env(s3_server, model_dir, TM_ACK_WAIT_S=FAULT_ENV["TM_ACK_WAIT_S"])
        system = System(single.url, tmp_path / "logs", env)
        try:
            await system.start("api", *STAGE_SERVICES)
            async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as api:
                body = {"task_name": TASK, "args": [source, http.url("put/output.png")]}
                response = await api.post("/api/v1/tasks", json=body)
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]
            assert await asyncio.to_thread(stopped.wait, 60), f"no upload within 60 s\n{system.logs()}"
            await asyncio.sleep(outage_s)  # the outage itself, not a synchronisation
            await asyncio.to_thread(single.restart)
            finals = await wait_terminal(single.url, [task_id], timeout_s=60)
            puts = [r.path for r in list(http.requests) if r.method == "PUT"]
            assert finals[task_id]["state"] == "SUCCESS", finals
            assert puts == ["/put/output.png"], f"{puts}\n{system.logs()}"
        finally:
            system.stop()

"""A stage's own /metrics endpoint: a real StageRunner on a real nats-server, scraped over HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.config import Settings
from shared.messages import Stage, TaskMessage
from shared.nats import Topology
from shared.runtime.errors import InputError, RetryableError
from shared.runtime.job import Job
from shared.runtime.metrics import WorkerMetrics
from shared.runtime.stage import StageRunner
from shared.taskstate.status import TaskStatus
from shared.taskstate.store import TaskStore
from shared.wire import work_subject


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
    assert response.status_code == 200
    return samples(response.text)


@pytest.fixture
def metrics() -> Iterator[WorkerMetrics]:
    served = WorkerMetrics("fetcher", "fetcher-test-1", "9.9.9", host="box")
    yield served
    served.close()


async def queue_task(topology: Topology, task_id: str) -> None:
    await TaskStore.of(topology).create(TaskStatus.new(task_id, priority=5))
    message = TaskMessage(task_id=task_id, priority=5, input_url="i", output_url="o", submitted_at="t")
    await topology.js.publish(work_subject(5, Stage.FETCH, task_id), message.pack())


async def run_until(runner: StageRunner, done: Callable[[], bool], timeout_s: float = 15) -> None:
    running = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not done():
                await asyncio.sleep(0.01)  # the runner's counters have no event to await
    finally:
        runner.stop()
        await asyncio.wait_for(running, timeout=10)


async def test_outcomes_durations_and_retries_are_counted(
    topology: Topology, settings: Settings, metrics: WorkerMetrics
) -> None:
    url = metrics.serve("127.0.0.1", 0)
    for task_id in ("ok", "flaky", "bad"):
        await queue_task(topology, task_id)
    calls: dict[str, int] = {}

    async def handle(job: Job) -> TaskMessage:
        calls[job.task.task_id] = calls.get(job.task.task_id, 0) + 1
        if job.task.task_id == "bad":
            raise InputError("input URL returned HTTP 404")
        if job.task.task_id == "flaky" and calls["flaky"] == 1:
            raise RetryableError("HTTP 503")
        return job.task

    runner = StageRunner(Stage.FETCH, handle, topology, settings, "fetcher-test-1", metrics)
    await run_until(runner, lambda: runner.counters.succeeded == 2 and runner.counters.failed == 1)

    page = await scrape(url)
    assert value(page, "tm_stage_messages_total", stage="fetch", outcome="succeeded") == 2
    assert value(page, "tm_stage_messages_total", stage="fetch", outcome="failed") == 1
    assert value(page, "tm_stage_messages_total", stage="fetch", outcome="retried") == 1
    assert value(page, "tm_stage_retries_total", stage="fetch") == 1
    assert value(page, "tm_stage_duration_seconds_count", stage="fetch", outcome="succeeded") == 2
    assert value(page, "tm_stage_duration_seconds_sum", stage="fetch", outcome="succeeded") > 0
    assert value(page, "tm_stage_in_flight", stage="fetch") == 0
    info = {"service": "fetcher", "worker_id": "fetcher-test-1", "version": "9.9.9", "host": "box"}
    assert value(page, "tm_worker_info", **info) == 1


async def test_in_flight_is_read_at_scrape_time(topology: Topology, settings: Settings, metrics: WorkerMetrics) -> None:
    url = metrics.serve("127.0.0.1", 0)
    await queue_task(topology, "held")
    entered, release = asyncio.Event(), asyncio.Event()

    async def handle(job: Job) -> TaskMessage:
        entered.set()
        await release.wait()
        return job.task

    runner = StageRunner(Stage.FETCH, handle, topology, settings, "fetcher-test-1", metrics)
    running = asyncio.create_task(run_until(runner, lambda: runner.counters.succeeded == 1))
    await asyncio.wait_for(entered.wait(), timeout=10)
    assert value(await scrape(url), "tm_stage_in_flight", stage="fetch") == 1
    release.set()
    await running
    assert value(await scrape(url), "tm_stage_in_flight", stage="fetch") == 0


def test_port_zero_gives_every_instance_its_own_port() -> None:
    first, second = WorkerMetrics("a", "a-1", "1"), WorkerMetrics("a", "a-2", "1")
    try:
        urls = {first.serve("127.0.0.1", 0), second.serve("127.0.0.1", 0)}
        assert len(urls) == 2
        assert all(u.startswith("http://127.0.0.1:") and u.endswith("/metrics") for u in urls)
    finally:
        first.close()
        second.close()


def test_listening_everywhere_advertises_the_hostname(metrics: WorkerMetrics) -> None:
    url = metrics.serve("0.0.0.0", 0)
    assert url.startswith(f"http://{socket.gethostname()}:")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200


def test_settings_default_to_an_ephemeral_port_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # /metrics has no authentication: only a deployment that scrapes from elsewhere opens it up.
    monkeypatch.delenv("TM_METRICS_PORT", raising=False)
    monkeypatch.delenv("TM_METRICS_HOST", raising=False)
    assert (Settings().metrics_port, Settings().metrics_host) == (0, "127.0.0.1")
    monkeypatch.setenv("TM_METRICS_PORT", "9464")
    monkeypatch.setenv("TM_METRICS_HOST", "0.0.0.0")
    assert (Settings().metrics_port, Settings().metrics_host) == (9464, "0.0.0.0")


def test_serve_defaults_to_loopback(metrics: WorkerMetrics) -> None:
    assert metrics.serve().startswith("http://127.0.0.1:")

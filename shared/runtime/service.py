"""Start-up and shutdown shared by the worker services: the stages (`python -m services.<stage>`) and
the notifier.

A service connects, declares the topology, announces itself in the workers bucket (shared/runtime/presence.py:
a heartbeat key with a TTL, so a dead worker disappears from the dashboard by itself) and on the NATS
service API (shared/runtime/micro.py: `nats micro ls`), serves its /metrics, runs its runner, and on
SIGTERM/SIGINT stops taking work, finishes what it holds, closes its clients, drains the connection and
logs one summary line.

    stage      make_handler(topology, settings) -> StageHandler; serve_stage runs it in a StageRunner
    notifier   its own runner (services/notifier/worker.py) through serve()
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.registry import Collector

from shared import tracing
from shared.config import Settings
from shared.logging import configure_logging
from shared.messages import Stage
from shared.nats import Topology, connect, declare
from shared.runtime.job import Handler
from shared.runtime.metrics import WorkerMetrics
from shared.runtime.micro import Instance, announced, runner_tally
from shared.runtime.presence import VERSION, make_worker_id, presence
from shared.runtime.stage import StageRunner

InfoProvider = Callable[[], dict[str, Any]]
Closer = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class StageHandler:
    """What a stage service gives the runtime: its handler, and what the process serves and closes beside it."""

    handle: Handler
    collectors: Sequence[Collector] = ()  # served on the process's /metrics (the upscaler's GPU and engine)
    describe: InfoProvider | None = None  # added to the heartbeat record (the upscaler's device and models)
    aclose: Closer | None = None  # at shutdown, after the last message (the stage's S3 and HTTP clients)


HandlerFactory = Callable[[Topology, Settings], Awaitable[StageHandler]]


class Runner(Protocol):
    """The loop a worker process runs: a StageRunner, the notifier."""

    @property
    def counters(self) -> Any: ...  # a dataclass of ints: the heartbeat's counters and the summary line

    @property
    def in_flight(self) -> Collection[str]: ...  # the task ids in hand

    async def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Running:
    """A service's runner, and what the process serves and closes beside it (as in StageHandler)."""

    runner: Runner
    collectors: Sequence[Collector] = ()
    describe: InfoProvider | None = None
    aclose: Closer | None = None
    stage: str | None = None  # the stage it serves, in its service API metadata (default: the service's name)


Starter = Callable[[Topology, Settings, str, WorkerMetrics], Awaitable[Running]]


async def serve(service: str, start: Starter) -> None:
    """Run the service `start(topology, settings, worker_id, metrics)` builds, until SIGTERM or SIGINT."""
    settings = Settings()
    log = configure_logging(service)
    nc = await connect(settings, name=service)
    topology = await declare(nc, settings)
    worker_id = make_worker_id(service)
    tracing.setup(service, VERSION, worker_id)  # only when OTEL_* asks for it (shared/tracing.py)
    metrics = WorkerMetrics(service, worker_id, VERSION)
    running = await start(topology, settings, worker_id, metrics)
    runner, describe = running.runner, running.describe
    for collector in running.collectors:
        metrics.register(collector)
    metrics_url = metrics.serve(settings.metrics_host, settings.metrics_port)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)

    def details() -> dict[str, Any]:
        return {
            "concurrency": settings.concurrency,
            "in_flight": sorted(runner.in_flight),
            "counters": vars(runner.counters),
            "metrics_url": metrics_url,
            **(describe() if describe else {}),
        }

    began = time.monotonic()
    log.info("service_started", worker_id=worker_id, nats_url=settings.nats_url, metrics_url=metrics_url)
    try:
        instance = Instance(service, worker_id, running.stage or service, settings.concurrency)
        tally = runner_tally(lambda: runner.counters, lambda: runner.in_flight)
        async with (
            presence(topology.workers, service, worker_id, settings.heartbeat_s, details),
            announced(nc, instance, tally, details),  # withdrawn first, once the runner has finished
        ):
            await runner.run()
    finally:
        if running.aclose is not None:
            await running.aclose()
        await nc.drain()
        tracing.shutdown()  # the spans still buffered
        log.info("service_stopped", uptime_s=round(time.monotonic() - began, 1), **vars(runner.counters))


async def serve_stage(service: str, stage: Stage, make_handler: HandlerFactory) -> None:
    """Run the stage whose handler `make_handler` builds, until SIGTERM or SIGINT."""

    async def start(topology: Topology, settings: Settings, worker_id: str, metrics: WorkerMetrics) -> Running:
        handler = await make_handler(topology, settings)
        runner = StageRunner(stage, handler.handle, topology, settings, worker_id, metrics)

        def describe() -> dict[str, Any]:  # the stage's own details, and what a task costs it (the API's eta)
            return (handler.describe() if handler.describe else {}) | runner.service_time.record()

        return Running(runner, handler.collectors, describe, handler.aclose, stage=stage.value)

    await serve(service, start)


def run(serving: Coroutine[Any, Any, None]) -> None:
    """Run a service's coroutine to the end, on uvloop where it is installed."""
    try:
        import uvloop  # the C event loop: cheaper I/O and callbacks for every NATS round trip
    except ImportError:
        asyncio.run(serving)
    else:
        uvloop.run(serving)


def main(service: str, stage: Stage, make_handler: HandlerFactory) -> None:
    run(serve_stage(service, stage, make_handler))

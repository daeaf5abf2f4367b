"""Start-up and shutdown shared by the stage services (`python -m services.<stage>`).

A service connects, declares the topology, announces itself in the workers bucket (shared/presence.py:
a heartbeat key with a TTL, so a dead worker disappears from the dashboard by itself), runs its stage, and on
SIGTERM/SIGINT stops taking work, finishes what it holds, drains the connection and logs one
summary line.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shared.config import Settings
from shared.job import Handler
from shared.logging import configure_logging
from shared.messages import Stage
from shared.metrics import WorkerMetrics
from shared.nats import Topology, connect, declare
from shared.presence import VERSION, make_worker_id, presence
from shared.stage import StageRunner

HandlerFactory = Callable[[Topology, Settings], Awaitable[Handler]]
InfoProvider = Callable[[], dict[str, Any]]


async def serve_stage(
    service: str, stage: Stage, make_handler: HandlerFactory, info: InfoProvider | None = None
) -> None:
    settings = Settings()
    log = configure_logging(service)
    nc = await connect(settings, name=service)
    topology = await declare(nc, settings)
    handler = await make_handler(topology, settings)
    worker_id = make_worker_id(service)
    metrics = WorkerMetrics(service, worker_id, VERSION)
    for collector in getattr(handler, "collectors", ()):  # e.g. the upscaler's GPU memory and engine counters
        metrics.register(collector)
    runner = StageRunner(stage, handler, topology, settings, worker_id, metrics)
    info = info or getattr(handler, "describe", None)  # e.g. the upscaler's device and models
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
            **(info() if info else {}),
        }

    began = time.monotonic()
    log.info("service_started", worker_id=runner.worker_id, nats_url=settings.nats_url, metrics_url=metrics_url)
    try:
        async with presence(topology.workers, service, worker_id, settings.heartbeat_s, details):
            await runner.run()
    finally:
        if (aclose := getattr(handler, "aclose", None)) is not None:  # e.g. the stage's S3 client
            await aclose()
        await nc.drain()
        log.info("service_stopped", uptime_s=round(time.monotonic() - began, 1), **vars(runner.counters))


def main(service: str, stage: Stage, make_handler: HandlerFactory, info: InfoProvider | None = None) -> None:
    try:
        import uvloop  # the C event loop: cheaper I/O and callbacks for every NATS round trip
    except ImportError:
        asyncio.run(serve_stage(service, stage, make_handler, info))
    else:
        uvloop.run(serve_stage(service, stage, make_handler, info))

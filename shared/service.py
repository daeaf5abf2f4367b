"""Start-up and shutdown shared by the stage services (`python -m services.<stage>`).

A service connects, declares the topology, announces itself in the workers bucket (a heartbeat
key with a TTL, so a dead worker disappears from the dashboard by itself), runs its stage, and on
SIGTERM/SIGINT stops taking work, finishes what it holds, drains the connection and logs one
summary line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from shared.config import Settings
from shared.logging import configure_logging
from shared.messages import Stage
from shared.nats import Topology, connect, declare
from shared.stage import Handler, StageRunner
from shared.state import utc_now

VERSION = "0.1.0"

HandlerFactory = Callable[[Topology, Settings], Awaitable[Handler]]
InfoProvider = Callable[[], dict[str, Any]]


def make_worker_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


async def announce(topology: Topology, runner: StageRunner, service: str, info: InfoProvider | None) -> None:
    """Heartbeat into the workers bucket until cancelled."""
    started_at = utc_now()
    key = f"{service}.{runner.worker_id}".replace(":", "_")
    while True:
        record = {
            "service": service,
            "worker_id": runner.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": VERSION,
            "started_at": started_at,
            "heartbeat_at": utc_now(),
            "concurrency": runner.settings.concurrency,
            "in_flight": sorted(runner.in_flight),
            "counters": vars(runner.counters),
            **(info() if info else {}),
        }
        try:
            await topology.workers.put(key, json.dumps(record).encode())
        except Exception as exc:  # a heartbeat must never take the worker down
            structlog.get_logger().warning("heartbeat_failed", error=str(exc))
        await asyncio.sleep(runner.settings.heartbeat_s)


async def serve_stage(
    service: str, stage: Stage, make_handler: HandlerFactory, info: InfoProvider | None = None
) -> None:
    settings = Settings()
    log = configure_logging(service)
    nc = await connect(settings, name=service)
    topology = await declare(nc, settings)
    handler = await make_handler(topology, settings)
    runner = StageRunner(stage, handler, topology, settings, make_worker_id(service))
    info = info or getattr(handler, "describe", None)  # e.g. the upscaler's device and models

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)

    heartbeat = asyncio.create_task(announce(topology, runner, service, info))
    began = time.monotonic()
    log.info("service_started", worker_id=runner.worker_id, nats_url=settings.nats_url)
    try:
        await runner.run()
    finally:
        heartbeat.cancel()
        try:
            await topology.workers.delete(f"{service}.{runner.worker_id}".replace(":", "_"))
        except Exception:
            pass
        await nc.drain()
        log.info("service_stopped", uptime_s=round(time.monotonic() - began, 1), **vars(runner.counters))


def main(service: str, stage: Stage, make_handler: HandlerFactory, info: InfoProvider | None = None) -> None:
    try:
        import uvloop  # the C event loop: cheaper I/O and callbacks for every NATS round trip
    except ImportError:
        asyncio.run(serve_stage(service, stage, make_handler, info))
    else:
        uvloop.run(serve_stage(service, stage, make_handler, info))

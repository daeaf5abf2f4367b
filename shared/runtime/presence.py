"""Who is running: every process (API, stages, notifier) keeps a heartbeat key in the workers bucket.

The bucket's keys expire after a TTL, so a process that dies disappears from the dashboard by itself; one
that stops cleanly withdraws its key at once. A record says who the process is (service, worker id, host,
pid, version, start and heartbeat times) plus whatever `details()` adds (in-flight tasks, counters, the
metrics URL, an upscaler's device and models).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from nats.js.kv import KeyValue

from shared.taskstate.status import utc_now

VERSION = "0.1.0"

Details = Callable[[], dict[str, Any]]


def make_worker_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


def worker_key(service: str, worker_id: str) -> str:
    return f"{service}.{worker_id}".replace(":", "_")


def worker_record(service: str, worker_id: str, started_at: str, details: Details) -> dict[str, Any]:
    """The record a heartbeat puts (and the NATS service API's `status` endpoint answers, shared/runtime/micro.py)."""
    return {
        "service": service,
        "worker_id": worker_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "version": VERSION,
        "started_at": started_at,
        "heartbeat_at": utc_now(),
        **details(),
    }


async def heartbeat(workers: KeyValue, service: str, worker_id: str, interval_s: float, details: Details) -> None:
    """Put this process's record every `interval_s` until cancelled; a failed put is logged, never raised."""
    started_at = utc_now()
    key = worker_key(service, worker_id)
    while True:
        record = worker_record(service, worker_id, started_at, details)
        try:
            await workers.put(key, json.dumps(record).encode())
        except Exception as exc:  # a heartbeat must never take the process down
            structlog.get_logger().warning("heartbeat_failed", error=str(exc))
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def presence(
    workers: KeyValue, service: str, worker_id: str, interval_s: float, details: Details
) -> AsyncIterator[None]:
    """Heartbeat while inside; on the way out stop it and withdraw the key."""
    beating = asyncio.create_task(heartbeat(workers, service, worker_id, interval_s, details))
    try:
        yield
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        with contextlib.suppress(Exception):
            await workers.delete(worker_key(service, worker_id))

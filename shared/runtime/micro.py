"""Every process on the NATS service API (`$SRV.PING|INFO|STATS`, nats-py's `nats.micro`), so the NATS CLI's
`nats micro ls / info / stats` lists the fleet and each instance's counters.

    name          tm-<service>: tm-api, tm-fetcher, tm-classifier, tm-upscaler, tm-uploader, tm-notifier
    version       shared/runtime/presence.py VERSION
    metadata      worker_id, host, pid, stage (the stage it serves; the API's is `submit`), concurrency
    endpoint      `status` on tm.status.<name>.<instance id>: answers the instance's heartbeat record, built
                  fresh (the same JSON as its key in the workers bucket)
    stats         each endpoint's `data`: {stage, in_flight, processed, errors, counters}, read from the
                  counters the runner keeps anyway (nothing is counted per message for this)

Registration adds subscriptions only; no message of the pipeline passes through it. A stopping process
withdraws it once its runner has finished (an instance that is still finishing its work answers), before
the connection drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from shared.runtime.presence import VERSION, Details, worker_record
from shared.taskstate.status import utc_now
from shared.wire import service_status_subject

NAME_PREFIX = "tm-"
STATUS_ENDPOINT = "status"
STOP_TIMEOUT_S = 2.0  # withdrawing must not hold up a shutdown when the broker is gone
DESCRIPTIONS = {
    "api": "task-manager REST API: submits, lists, follows and controls tasks",
    "fetcher": "task-manager fetch stage: reads each task's input and checks it is an image",
    "classifier": "task-manager classify stage: picks each image's category and model",
    "upscaler": "task-manager upscale stage: runs the super-resolution network",
    "uploader": "task-manager upload stage: writes the output and marks the task SUCCESS",
    "notifier": "task-manager notifier: POSTs the signed webhook of every ended task",
}
# Which runner counters are errors, and which are not a message answered (see runner_tally).
ERROR_COUNTERS = ("failed", "retried")
NOT_PROCESSED = ("handed_back", "waited_for_own_run")

Tally = Callable[[], dict[str, Any]]  # this instance now: in_flight, processed, errors, counters (a dict)


def service_name(service: str) -> str:
    """The service API name of a kind of process (`fetcher` -> `tm-fetcher`)."""
    return f"{NAME_PREFIX}{service}"


def runner_tally(counters: Callable[[], Any], in_flight: Callable[[], Collection[str]]) -> Tally:
    """The tally of a runner (a StageRunner, the notifier): its counters dataclass and its tasks in hand.

    processed counts every message answered (succeeded, dropped, failed, retried; the notifier's delivered,
    skipped, ...), errors those that failed or will be tried again; a message handed back at shutdown or a
    redelivery that waited for its own run is not (yet) an answer.
    """

    def tally() -> dict[str, Any]:
        values = {key: int(value) for key, value in vars(counters()).items()}
        return {
            "in_flight": len(in_flight()),
            "processed": sum(v for k, v in values.items() if k not in NOT_PROCESSED),
            "errors": sum(values.get(k, 0) for k in ERROR_COUNTERS),
            "counters": values,
        }

    return tally


@dataclass(frozen=True)
class Instance:
    """Who registers: the process's kind, worker id, the stage it serves and its concurrency (None: not a worker)."""

    service: str
    worker_id: str
    stage: str
    concurrency: int | None = None

    def metadata(self) -> dict[str, str]:
        """The service API's metadata: strings only."""
        fields = {"worker_id": self.worker_id, "host": socket.gethostname(), "pid": str(os.getpid())}
        fields["stage"] = self.stage
        if self.concurrency is not None:
            fields["concurrency"] = str(self.concurrency)
        return fields


def stats_data(stage: str, tally: Tally) -> dict[str, Any]:
    """What `nats micro stats` shows under each endpoint's `data`: the instance's work counters."""
    return {"stage": stage, "in_flight": 0, "processed": 0, "errors": 0, "counters": {}, **tally()}


async def register(nc: Client, instance: Instance, tally: Tally, details: Details) -> Service:
    """Add this process to the NATS service API, with its `status` endpoint; `stop()` withdraws it."""
    started_at = utc_now()
    name = service_name(instance.service)

    def on_stats(_: EndpointStats) -> dict[str, Any]:
        return stats_data(instance.stage, tally)

    service = await add_service(
        nc,
        name=name,
        version=VERSION,
        description=DESCRIPTIONS.get(instance.service, f"task-manager {instance.service}"),
        metadata=instance.metadata(),
        stats_handler=on_stats,
    )

    async def status(request: Request) -> None:
        record = worker_record(instance.service, instance.worker_id, started_at, details)
        await request.respond(json.dumps(record).encode())

    await service.add_endpoint(
        name=STATUS_ENDPOINT,
        subject=service_status_subject(name, service.id),  # `tm.status.<name>.*`: every instance of a kind
        handler=status,
        metadata={"description": "this instance's heartbeat record, as JSON"},
    )
    await nc.flush()  # add_endpoint only queues its SUB: answer from the first request after registering
    return service


async def withdraw(service: Service) -> None:
    """Leave the service API: unsubscribe, bounded and quiet (a broker that is gone takes the interest with it)."""
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await service.stop()
    except Exception as exc:  # TimeoutError included: the connection's drain or close ends it anyway
        structlog.get_logger().info("service_api_withdraw_failed", error=repr(exc))


@contextlib.asynccontextmanager
async def announced(nc: Client, instance: Instance, tally: Tally, details: Details) -> AsyncIterator[Service]:
    """On the NATS service API while inside; withdrawn on the way out."""
    service = await register(nc, instance, tally, details)
    try:
        yield service
    finally:
        await withdraw(service)

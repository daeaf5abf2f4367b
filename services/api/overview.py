"""What the dashboard shows, read live from NATS: workers, GPU configuration and queues."""

from __future__ import annotations

import json
from typing import Any

from nats.js.errors import NoKeysError, NotFoundError

from shared.messages import PIPELINE, PRIORITIES, consumer_name, work_stream
from shared.nats import Topology


async def list_workers(topology: Topology) -> list[dict[str, Any]]:
    """Every live worker instance (heartbeat keys expire by themselves when a worker dies)."""
    try:
        keys = await topology.workers.keys()
    except NoKeysError:
        return []
    workers = []
    for key in keys:
        try:
            entry = await topology.workers.get(key)
        except NotFoundError:
            continue
        if entry.value:
            workers.append(json.loads(entry.value))
    return sorted(workers, key=lambda w: (w.get("service", ""), w.get("worker_id", "")))


async def queue_depths(topology: Topology) -> list[dict[str, Any]]:
    """Per priority stream and stage consumer: waiting, in progress and redelivered counts."""
    rows = []
    for priority in sorted(PRIORITIES, reverse=True):
        for stage in PIPELINE:
            try:
                info = await topology.js.consumer_info(work_stream(priority), consumer_name(stage))
            except NotFoundError:
                continue
            rows.append(
                {
                    "stream": work_stream(priority),
                    "priority": priority,
                    "stage": stage.value,
                    "pending": info.num_pending or 0,
                    "ack_pending": info.num_ack_pending or 0,
                    "redelivered": info.num_redelivered or 0,
                }
            )
    return rows

"""What the dashboard shows, read live from NATS: workers, GPU configuration, queues and recent tasks.

Workers are the heartbeat keys of the TM_WORKERS bucket (they expire by themselves when a worker
dies); queues come from shared/queues.py; recent tasks are the last entries written to the TM_TASKS
bucket (history 1, so each stored message is the current state of one task, and the newest ones are
the tasks that changed last), read with batched direct gets without creating a consumer.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import NoKeysError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from shared.nats import Topology
from shared.queues import QueueSnapshot, snapshot
from shared.runtime.presence import VERSION
from shared.taskstate.status import TaskStatus, parse_time
from shared.wire import TASK_ENTRIES_FILTER, TASKS_STREAM

RECENT_TASKS = 20
BATCH_WAIT_S = 2.0


class WorkerView(BaseModel):
    """One running service instance, from its heartbeat (unknown fields are passed through)."""

    model_config = ConfigDict(extra="allow")

    service: str
    worker_id: str
    host: str | None = None
    pid: int | None = None
    version: str | None = None
    started_at: str | None = None
    heartbeat_at: str | None = None
    uptime_s: float | None = None
    heartbeat_age_s: float | None = None
    concurrency: int | None = None
    in_flight: list[str] = Field(default_factory=list, description="ids of the tasks it holds")
    counters: dict[str, int] = Field(default_factory=dict)
    metrics_url: str | None = None


class GpuView(BaseModel):
    """An upscaler's device, precision, tiling and models (what its `describe()` reports)."""

    model_config = ConfigDict(extra="allow")

    worker_id: str
    host: str | None = None
    device: str | None = None
    device_name: str | None = None
    precision: str | None = None
    tile: int | str | None = None
    memory_total_mb: int | None = None
    memory_used_mb: int | None = None
    models_loaded: str | None = None
    downloading: str | None = Field(None, description="model weights being downloaded, with their progress")


class TaskView(BaseModel):
    task_id: str
    state: str
    progress: float
    priority: int
    stage: str | None = Field(None, description="the stage it is at (running) or failed in")
    submitted_at: str
    completed_at: str | None = None
    age_s: float = Field(description="seconds since submission")
    duration_s: float | None = Field(None, description="submission to completion")
    error: str | None = None


def _seconds(since: str | None, until: datetime) -> float | None:
    if not since:
        return None
    try:
        return round(max(0.0, (until - parse_time(since)).total_seconds()), 3)
    except ValueError:
        return None


async def list_workers(topology: Topology) -> list[dict[str, Any]]:
    """Every live worker instance's heartbeat record."""
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


def worker_views(records: list[dict[str, Any]], now: datetime) -> list[WorkerView]:
    """Heartbeat records with their uptime and heartbeat age."""
    views = [
        WorkerView.model_validate(
            {
                **record,
                "uptime_s": _seconds(record.get("started_at"), now),
                "heartbeat_age_s": _seconds(record.get("heartbeat_at"), now),
            }
        )
        for record in records
        if record.get("service") and record.get("worker_id")
    ]
    return sorted(views, key=lambda v: (v.service, v.worker_id))


def gpu_views(records: list[dict[str, Any]]) -> list[GpuView]:
    skip = {"service", "pid", "version", "started_at", "heartbeat_at", "concurrency", "in_flight", "counters"}
    return [
        GpuView.model_validate({k: v for k, v in record.items() if k not in skip})
        for record in records
        if record.get("service") == "upscaler" and record.get("worker_id")
    ]


async def _direct_batch(nc: NATS, stream: str, start_seq: int, batch: int, subject: str) -> list[tuple[int, Any]]:
    """Up to `batch` messages of `stream` matching `subject` from `start_seq` on, as (seq, msg), in
    one batched direct get (nats-server 2.11+); an end-of-batch status message closes the answer."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    request = {"seq": start_seq, "batch": batch, "next_by_subj": subject}
    found: list[tuple[int, Any]] = []
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        async with asyncio.timeout(BATCH_WAIT_S):
            while True:
                msg = await sub.next_msg(timeout=BATCH_WAIT_S)
                headers = msg.headers or {}
                if headers.get("Status"):  # 204 end of batch, 404 nothing there
                    break
                found.append((int(headers["Nats-Sequence"]), msg))
    except TimeoutError:
        pass  # show what came in time
    finally:
        await sub.unsubscribe()
    return found


async def recent_tasks(topology: Topology, limit: int = RECENT_TASKS) -> list[TaskView]:
    """The `limit` tasks written to last, newest submission first (deleted ones left out)."""
    try:
        state = (await topology.js.stream_info(TASKS_STREAM)).state
    except NotFoundError:
        return []
    messages: dict[int, Any] = {}
    end, span = state.last_seq + 1, limit * 8
    while end > state.first_seq and len(messages) < limit * 2:  # *2: some are delete markers
        start = max(state.first_seq, end - span)
        for seq, msg in await _direct_batch(topology.nc, TASKS_STREAM, start, end - start, TASK_ENTRIES_FILTER):
            if seq < end:
                messages[seq] = msg
        end, span = start, span * 4
    now = datetime.now(UTC)
    views = []
    for seq in sorted(messages, reverse=True):
        msg = messages[seq]
        if not msg.data or (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            continue
        try:
            views.append(task_view(TaskStatus.from_json(msg.data), now))
        except ValueError:
            continue
        if len(views) == limit:
            break
    return sorted(views, key=lambda v: v.submitted_at, reverse=True)


def task_view(status: TaskStatus, now: datetime) -> TaskView:
    if status.state.terminal:
        stage = next((s.name.value for s in status.subtasks if s.error), None)
    else:
        stage = next((s.name.value for s in status.subtasks if s.state.value != "SUCCESS"), None)
    done = parse_time(status.completed_at) if status.completed_at else None
    return TaskView(
        task_id=status.task_id,
        state=status.state.value,
        progress=status.progress,
        priority=status.priority,
        stage=stage,
        submitted_at=status.submitted_at,
        completed_at=status.completed_at,
        age_s=_seconds(status.submitted_at, now) or 0.0,
        duration_s=_seconds(status.submitted_at, done) if done else None,
        error=status.error,
    )


class Endpoint(BaseModel):
    methods: str
    path: str
    summary: str


class Summary(BaseModel):
    workers: int
    waiting: int = Field(description="messages not delivered yet, all stages and priorities")
    in_progress: int = Field(description="messages held by workers")
    oldest_waiting_s: float | None = None


class DashboardData(BaseModel):
    """Everything /dashboard shows, as /dashboard/data returns it."""

    generated_at: str
    version: str
    summary: Summary
    workers: list[WorkerView]
    gpus: list[GpuView]
    queues: QueueSnapshot
    tasks: list[TaskView]
    endpoints: list[Endpoint]


async def collect(topology: Topology, endpoints: list[Endpoint]) -> DashboardData:
    """One consistent read of everything the dashboard shows."""
    records, queues, tasks = await asyncio.gather(list_workers(topology), snapshot(topology.js), recent_tasks(topology))
    now = datetime.now(UTC)
    ages = [s.oldest_waiting_s for s in queues.stages if s.oldest_waiting_s is not None]
    return DashboardData(
        generated_at=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        version=VERSION,
        summary=Summary(
            workers=len(records),
            waiting=sum(s.pending for s in queues.stages),
            in_progress=sum(s.ack_pending for s in queues.stages),
            oldest_waiting_s=max(ages) if ages else None,
        ),
        workers=worker_views(records, now),
        gpus=gpu_views(records),
        queues=queues,
        tasks=tasks,
        endpoints=endpoints,
    )

"""A snapshot of the work queues: per priority stream and per stage consumer, read live from JetStream.

Used by the dashboard (`/dashboard`, `/dashboard/data`) and `task-manager queues`. Everything is
read, nothing declared or changed. The oldest waiting age of a consumer is the age of the first
message it has not delivered yet: the next message matching its filter subject after its delivered
stream sequence (one `STREAM.MSG.GET` with `next_by_subj`), so it costs a request only for a
consumer that has something waiting.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from shared.messages import PIPELINE, PRIORITIES, Stage
from shared.wire import consumer_name, work_filter, work_stream


class ConsumerDepth(BaseModel):
    """One stage consumer of one priority stream."""

    stream: str
    priority: int
    stage: str
    pending: int  # stored, not delivered yet
    ack_pending: int  # delivered, held by a worker (or waiting for a redelivery)
    redelivered: int
    oldest_waiting_s: float | None = None  # age of the first undelivered message; None when nothing waits


class StreamDepth(BaseModel):
    """One priority stream: every message it stores, at any stage, waiting or held."""

    stream: str
    priority: int
    messages: int
    size_bytes: int
    oldest_message_s: float | None = None


class StageDepth(BaseModel):
    """One stage, all priorities together."""

    stage: str
    pending: int = 0
    ack_pending: int = 0
    redelivered: int = 0
    oldest_waiting_s: float | None = None


class QueueSnapshot(BaseModel):
    streams: list[StreamDepth]  # highest priority first
    consumers: list[ConsumerDepth]  # highest priority first, stages in pipeline order
    stages: list[StageDepth]  # pipeline order


def _age_s(stored_at: datetime | None, now: datetime) -> float | None:
    if stored_at is None:
        return None
    return round(max(0.0, (now - stored_at).total_seconds()), 3)


async def _message_time(js: JetStreamContext, stream: str, seq: int, subject: str | None = None) -> datetime | None:
    """When the stream stored its message `seq` (with `subject`: the first one at or after `seq`
    matching it), or None when there is none (taken in the meantime)."""
    try:
        if subject is None:
            message = await js.get_msg(stream, seq=seq)
        else:
            message = await js.get_msg(stream, seq=seq, subject=subject, next=True)
    except NotFoundError:
        return None
    return message.time


async def _consumer(js: JetStreamContext, priority: int, stage: Stage, now: datetime) -> ConsumerDepth | None:
    stream = work_stream(priority)
    try:
        info = await js.consumer_info(stream, consumer_name(stage))
    except NotFoundError:
        return None
    pending = info.num_pending or 0
    oldest = None
    if pending:
        after = info.delivered.stream_seq if info.delivered else 0
        oldest = _age_s(await _message_time(js, stream, after + 1, work_filter(priority, stage)), now)
    return ConsumerDepth(
        stream=stream,
        priority=priority,
        stage=stage.value,
        pending=pending,
        ack_pending=info.num_ack_pending or 0,
        redelivered=info.num_redelivered or 0,
        oldest_waiting_s=oldest,
    )


async def _stream(js: JetStreamContext, priority: int, now: datetime) -> StreamDepth | None:
    stream = work_stream(priority)
    try:
        state = (await js.stream_info(stream)).state
    except NotFoundError:
        return None
    oldest = _age_s(await _message_time(js, stream, state.first_seq), now) if state.messages else None
    return StreamDepth(
        stream=stream, priority=priority, messages=state.messages, size_bytes=state.bytes, oldest_message_s=oldest
    )


def stage_totals(consumers: list[ConsumerDepth]) -> list[StageDepth]:
    """Per stage sums over the priorities; the oldest waiting age is the largest of them."""
    totals = {stage.value: StageDepth(stage=stage.value) for stage in PIPELINE}
    for row in consumers:
        total = totals[row.stage]
        total.pending += row.pending
        total.ack_pending += row.ack_pending
        total.redelivered += row.redelivered
        if row.oldest_waiting_s is not None:
            total.oldest_waiting_s = max(total.oldest_waiting_s or 0.0, row.oldest_waiting_s)
    return list(totals.values())


async def snapshot(js: JetStreamContext) -> QueueSnapshot:
    """Every work stream and stage consumer, highest priority first; missing ones are left out."""
    now = datetime.now(UTC)
    priorities = sorted(PRIORITIES, reverse=True)
    streams = await asyncio.gather(*(_stream(js, p, now) for p in priorities))
    consumers = await asyncio.gather(*(_consumer(js, p, s, now) for p in priorities for s in PIPELINE))
    found = [c for c in consumers if c is not None]
    return QueueSnapshot(streams=[s for s in streams if s is not None], consumers=found, stages=stage_totals(found))


def format_age(seconds: float | None) -> str:
    """A short human age: `-`, `850ms`, `12s`, `4m05s`, `2h13m`, `3d04h`."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"

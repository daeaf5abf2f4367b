"""Connecting to NATS and declaring the JetStream topology every service relies on (each piece's
configuration: shared/topology.py).

Declaration is idempotent, so every service declares what it uses at start-up and any of them may
start first. See docs/architecture.md for the map of streams, subjects, consumers and buckets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    KeyValueConfig,
    ObjectStoreConfig,
    RePublish,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from shared.config import Settings
from shared.messages import PIPELINE, PRIORITIES
from shared.topology import log_stream_config, notifier_consumer_config, stage_consumer_config, work_stream_config
from shared.wire import (
    BLOBS_BUCKET,
    BLOBS_STREAM,
    CHANGES_SUBJECTS,
    DEAD_STREAM,
    DEAD_SUBJECTS,
    EVENTS_STREAM,
    EVENTS_SUBJECTS,
    IDEMPOTENCY_BUCKET,
    LEASES_BUCKET,
    LIVE_CHANGES_SUBJECTS,
    SESSIONS_BUCKET,
    TASKS_BUCKET,
    WORKERS_BUCKET,
    work_stream,
)

log = structlog.get_logger()


async def connect(settings: Settings, name: str) -> NATS:
    """Connect with unbounded reconnects: a restarting server must not stop a service.

    `NATS_URL` may list several servers separated by commas (the nodes of a cluster)."""
    return await nats.connect(
        servers=[url.strip() for url in settings.nats_url.split(",") if url.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
    )


@dataclass
class Topology:
    """Handles on everything a service touches in JetStream."""

    nc: NATS
    js: JetStreamContext
    tasks: KeyValue
    workers: KeyValue
    leases: KeyValue
    idempotency: KeyValue
    blobs: ObjectStore
    sessions: KeyValue


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    await _retrying(lambda: _declare_stream(js, config))


async def _declare_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:
            pass  # created concurrently by another service: update below
    await js.update_stream(config)


T = TypeVar("T")
DECLARE_ATTEMPTS = 6


async def _retrying(step: Callable[[], Awaitable[T]]) -> T:
    """Declarations are idempotent; one left unanswered (services racing to create replicated
    streams on a fresh cluster) is sent again."""
    for attempt in range(DECLARE_ATTEMPTS):
        try:
            return await step()
        except (nats.errors.TimeoutError, NoStreamResponseError, ServiceUnavailableError):
            if attempt == DECLARE_ATTEMPTS - 1:
                raise
            log.warning("declare_retry", attempt=attempt + 1)
            await asyncio.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


async def _ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Create the bucket, or use it as it is when another service created it with other settings
    (e.g. a different heartbeat TTL): the first declaration wins, no service fails to start."""
    return await _retrying(lambda: _declare_kv(js, config))


async def _declare_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        return await js.create_key_value(config)
    except BadRequestError:
        log.warning("bucket_config_differs", bucket=config.bucket)
        return await js.key_value(config.bucket)


async def _ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    await _retrying(lambda: _declare_consumer(js, stream, config))


async def _declare_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    try:
        await js.add_consumer(stream, config)
    except BadRequestError as exc:  # exists with another config (e.g. a different ack wait): keep it
        log.warning("consumer_config_differs", stream=stream, consumer=config.durable_name, error=str(exc))


async def _declare_object_store(js: JetStreamContext, settings: Settings) -> ObjectStore:
    config = ObjectStoreConfig(replicas=settings.replicas, storage=StorageType.FILE, ttl=settings.blobs_max_age_s)
    try:
        return await js.create_object_store(BLOBS_BUCKET, config)
    except BadRequestError:  # there already: keep its objects, take this configuration's retention
        stream = (await js.stream_info(BLOBS_STREAM)).config
        if stream.max_age != settings.blobs_max_age_s:
            stream.max_age = settings.blobs_max_age_s
            await js.update_stream(stream)
        return await js.object_store(BLOBS_BUCKET)


async def bind(nc: NATS) -> Topology:
    """Handles on the topology without declaring anything (tools that must not change it)."""
    js = nc.jetstream()
    return Topology(
        nc=nc,
        js=js,
        tasks=await js.key_value(TASKS_BUCKET),
        workers=await js.key_value(WORKERS_BUCKET),
        leases=await js.key_value(LEASES_BUCKET),
        idempotency=await js.key_value(IDEMPOTENCY_BUCKET),
        blobs=await js.object_store(BLOBS_BUCKET),
        sessions=await js.key_value(SESSIONS_BUCKET),
    )


async def declare(nc: NATS, settings: Settings) -> Topology:
    """Create or update every stream, consumer, bucket and object store; return handles on them."""
    js = nc.jetstream()
    for priority in PRIORITIES:
        await _ensure_stream(js, work_stream_config(priority, settings))
        for stage in PIPELINE:
            await _ensure_consumer(js, work_stream(priority), stage_consumer_config(stage, priority, settings))
    events = ("Task state events, replayable by late subscribers", settings.events_max_age_s)
    events_config = log_stream_config(EVENTS_STREAM, EVENTS_SUBJECTS, *events, settings)
    events_config.subjects = [EVENTS_SUBJECTS, CHANGES_SUBJECTS]  # terminal events and every change (docs/events.md)
    events_config.allow_direct = True  # the SSE endpoint reads a task's stored changes by direct gets
    events_config.republish = RePublish(src=CHANGES_SUBJECTS, dest=LIVE_CHANGES_SUBJECTS)  # ... and follows these
    await _ensure_stream(js, events_config)
    await _ensure_consumer(js, EVENTS_STREAM, notifier_consumer_config(settings))
    dead = (
        "Dead letters: messages that failed for good, with their headers and error",
        settings.dead_letters_max_age_s,
    )
    await _ensure_stream(js, log_stream_config(DEAD_STREAM, DEAD_SUBJECTS, *dead, settings))
    tasks = await _ensure_kv(
        js,
        # direct: gets are $JS.API.DIRECT.GET (the raw message, answerable by any replica) instead of
        # STREAM.MSG.GET's JSON envelope on the JetStream API queue.
        KeyValueConfig(
            bucket=TASKS_BUCKET, history=1, replicas=settings.replicas, storage=StorageType.FILE, direct=True
        ),
    )
    workers = await _ensure_kv(
        js,
        KeyValueConfig(
            bucket=WORKERS_BUCKET,
            history=1,
            ttl=settings.heartbeat_s * 3 + 5,  # margin for a loaded machine's late heartbeat
            replicas=settings.replicas,
            # File, not memory: a restarted standalone server forgets memory streams, and no
            # service would declare the bucket again (heartbeats, hence the dashboard, would stop).
            storage=StorageType.FILE,
        ),
    )
    leases = await _ensure_kv(
        js, KeyValueConfig(bucket=LEASES_BUCKET, history=1, ttl=settings.lease_ttl_s, replicas=settings.replicas)
    )
    idempotency = await _ensure_kv(
        js,
        KeyValueConfig(
            bucket=IDEMPOTENCY_BUCKET, history=1, ttl=settings.idempotency_ttl_s, replicas=settings.replicas
        ),
    )
    blobs = await _retrying(lambda: _declare_object_store(js, settings))
    # A revocation outlives the session it ends: it is written before the session expires and kept a
    # whole session lifetime. Direct gets: the dashboard guard reads it on every request with a cookie.
    session_ttl_s = settings.dashboard_session_s or None  # 0: no sessions, nothing is ever written
    sessions = await _ensure_kv(
        js,
        KeyValueConfig(bucket=SESSIONS_BUCKET, history=1, ttl=session_ttl_s, replicas=settings.replicas, direct=True),
    )
    return Topology(
        nc=nc,
        js=js,
        tasks=tasks,
        workers=workers,
        leases=leases,
        idempotency=idempotency,
        blobs=blobs,
        sessions=sessions,
    )

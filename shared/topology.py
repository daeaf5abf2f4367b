"""What the JetStream topology is: the configuration of every work stream, log stream and consumer.

shared/nats.py declares them (idempotently, at every service's start); the names come from shared/wire.py.
"""

from __future__ import annotations

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from shared.config import Settings
from shared.messages import Stage
from shared.wire import (
    EVENTS_SUBJECTS,
    NOTIFIER_CONSUMER,
    consumer_name,
    priority_filter,
    queued_subject_pattern,
    work_filter,
    work_stream,
)

DUPLICATE_WINDOW_S = 120.0


def work_stream_config(priority: int, settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=work_stream(priority),
        description=f"Pipeline work queue for priority {priority}",
        subjects=[priority_filter(priority)],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_msg_ttl=True,
        discard=DiscardPolicy.OLD,
        republish=RePublish(src=priority_filter(priority), dest=queued_subject_pattern(priority), headers_only=True),
    )


def log_stream_config(name: str, subjects: str, description: str, max_age_s: float, settings: Settings) -> StreamConfig:
    """A stream kept for reading back (events, dead letters): limits retention by age."""
    return StreamConfig(
        name=name,
        description=description,
        subjects=[subjects],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        max_age=max_age_s,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def max_deliveries(settings: Settings) -> int:
    """JetStream's delivery bound. Retries are counted by the stage (nak with backoff); this only
    stops a message that keeps crashing workers from cycling forever."""
    return settings.max_retries + 3


def stage_consumer_config(stage: Stage, priority: int, settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=consumer_name(stage),
        description=f"{stage.value} workers, priority {priority}",
        filter_subject=work_filter(priority, stage),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=max_deliveries(settings),
        max_ack_pending=-1,
        num_replicas=settings.replicas,
    )


def notifier_consumer_config(settings: Settings) -> ConsumerConfig:
    """The webhooks' consumer: every terminal event, kept in place while no notifier runs."""
    return ConsumerConfig(
        durable_name=NOTIFIER_CONSUMER,
        description="Webhook deliveries (services/notifier)",
        filter_subject=EVENTS_SUBJECTS,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.webhook_timeout_s * 2 + 5,  # one delivery's deadline, with room to answer it
        max_deliver=settings.webhook_max_attempts + 3,  # the notifier counts attempts; this stops a crash loop
        max_ack_pending=-1,
        num_replicas=settings.replicas,
    )

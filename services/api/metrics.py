"""The API's Prometheus metrics, named exactly as the API reference lists them.

Completions are counted from the task events stream (the workers publish them), so the API's
/dashboard/metrics covers the whole pipeline. Each API replica counts the events stored from its
start on; scrape one replica, or sum by replica knowing each sees every event. They are read from
the stream (an ordered consumer), not from the subject: a terminal event published again after a
crash (same message id) is stored once and counted once, where a subject subscriber would see both.
"""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.taskstate.status import TaskStatus, parse_time
from shared.wire import EVENTS_STREAM, EVENTS_SUBJECTS

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "tasks_submitted", "Total number of tasks submitted", ["task_name"], registry=self.registry
        )
        self.completed = Counter(
            "tasks_completed",
            "Total number of tasks completed",
            ["task_name", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "task_duration_seconds",
            "Task execution duration in seconds",
            ["task_name", "worker_type"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._subscription: Subscription | None = None

    def observe_completion(self, status: TaskStatus) -> None:
        self.completed.labels(status.task_name, status.state.value.lower()).inc()
        began = status.received_at or status.submitted_at
        if status.completed_at:
            seconds = (parse_time(status.completed_at) - parse_time(began)).total_seconds()
            self.duration.labels(status.task_name, status.worker_type or "none").observe(max(seconds, 0.0))

    async def follow_events(self, nc: NATS) -> None:
        async def on_event(msg: Msg) -> None:
            try:
                self.observe_completion(TaskStatus.from_json(msg.data))
            except Exception as exc:
                structlog.get_logger().warning("bad_event", subject=msg.subject, error=str(exc))

        self._subscription = await nc.jetstream().subscribe(
            EVENTS_SUBJECTS, stream=EVENTS_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW, cb=on_event
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

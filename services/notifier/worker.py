"""The notifier: POSTs a task's final status to its `callback_url` once the task has ended.

The durable pull consumer "notifier" on the terminal events (task.events.>, each the whole status;
declared with the rest of the topology in shared/nats.py) reads every ended task; one without a
callback is acknowledged at once. A delivery that may pass later (a 5xx, 408, 425 or 429 answer, a
timeout, a refused connection) is retried with exponential backoff through `nak(delay)`, up to
TM_WEBHOOK_MAX_ATTEMPTS attempts; then, or at once for an answer no retry changes (another 4xx, a
redirect, an address the SSRF rules refuse, a URL httpx cannot send to), a `webhook_failed` log line
records the task, the URL and the last error, and the message is terminated. A delivery error nobody
expected is retried like a 5xx. Each attempt's outcome is also written to the task's status
(`callback`: retrying, delivered or failed, attempts, last result), after the message is answered, so
a slow state write can never cause a second delivery.

Several notifiers share the consumer (each event goes to one of them); a durable consumer keeps its
place, so a task that ends while no notifier runs still gets its callback when one starts. The process
is a worker like the stages: shared/runtime/consumer.py takes the events `TM_CONCURRENCY` at a time (a delivery
still running when the shutdown grace period ends is handed back with a nak), shared/runtime/service.py starts
and stops it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import structlog
from nats.aio.msg import Msg

from services.notifier.delivery import deliver
from shared import tracing
from shared.config import Settings
from shared.egress.failures import s3_endpoint, safe_url
from shared.egress.netguard import AddressPolicy
from shared.egress.transport import guarded_client
from shared.nats import Topology
from shared.runtime.consumer import DurablePuller, Slots
from shared.runtime.metrics import WorkerMetrics
from shared.runtime.service import Running, run, serve
from shared.runtime.stage import backoff_s
from shared.taskstate.status import TaskStatus
from shared.taskstate.store import TaskGoneError, TaskStore
from shared.wire import EVENTS_STREAM, NOTIFIER_CONSUMER, terminal_event_id

SERVICE = "notifier"
STAGE_LABEL = "notify"  # its deliveries in the workers' tm_stage_* metrics, as if it were a stage
MAX_BACKOFF_S = 600.0  # a receiver may be down for a while: webhook retries wait longer than stage retries
log = structlog.get_logger()


@dataclass
class NotifierCounters:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0  # ended tasks without a callback_url
    handed_back: int = 0  # deliveries still running when the shutdown grace period ended


class Notifier:
    """Delivers the webhook of every ended task, `concurrency` at a time, until stopped."""

    def __init__(
        self,
        topology: Topology,
        settings: Settings,
        client: httpx.AsyncClient,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.client = client
        self.counters = NotifierCounters()
        self.store = TaskStore.of(topology)
        self.in_flight: set[str] = set()
        puller = DurablePuller(topology.js, EVENTS_STREAM, NOTIFIER_CONSUMER)
        self._slots = Slots(puller, self.process, settings.concurrency, settings.shutdown_grace_s, STAGE_LABEL)
        if metrics is not None:
            metrics.watch_in_flight(STAGE_LABEL, lambda: len(self.in_flight))

    async def run(self) -> None:
        await self._slots.run()

    def stop(self) -> None:
        """Stop taking events; deliveries under way finish (or are handed back after the grace period)."""
        self._slots.stop()

    async def process(self, msg: Msg) -> None:
        try:
            status = TaskStatus.from_json(msg.data)
        except ValueError as exc:
            log.error("bad_event", subject=msg.subject, error=str(exc))
            await msg.term()
            return
        url = status.kwargs.get("callback_url")
        if not isinstance(url, str) or not url:
            self.counters.skipped += 1
            await msg.ack()
            return
        if tracing.ENABLED:  # checked here, so that with tracing off no event pays for it
            attributes = {"task.id": status.task_id, "task.run": status.run, "url.full": safe_url(url)}
            with tracing.delivering(msg.headers, attributes) as span:
                tracing.outcome(span, await self._deliver(msg, status, url))
        else:
            await self._deliver(msg, status, url)

    async def _deliver(self, msg: Msg, status: TaskStatus, url: str) -> str:
        """One attempt at the webhook, the event answered accordingly; the outcome (as in the metrics)."""
        attempt = msg.metadata.num_delivered or 1
        event_id = (msg.headers or {}).get("Nats-Msg-Id") or terminal_event_id(
            status.task_id, status.run, status.state.value
        )
        fields: dict[str, object] = {
            "task_id": status.task_id,
            "state": status.state.value,
            "callback_url": safe_url(url),
        }
        self.in_flight.add(status.task_id)
        began = time.monotonic()
        try:
            secret, timeout_s = self.settings.webhook_secret, self.settings.webhook_timeout_s
            # Its deadline ends it well within the consumer's ack wait: no in-progress acks needed.
            delivery = deliver(self.client, url, status, event_id, secret, deadline_s=timeout_s)
            outcome = await self._slots.start_work(delivery)
        except asyncio.CancelledError:
            if not self._slots.handing_back:
                raise
            await msg.nak()  # shutting down: another notifier sends it now, with the same event id
            self.counters.handed_back += 1
            self._observe("handed_back", began)
            log.info("webhook_handed_back", attempt=attempt, **fields)
            return "handed_back"
        finally:
            self.in_flight.discard(status.task_id)
        fields.update(attempt=attempt, result=outcome.detail, duration_ms=round((time.monotonic() - began) * 1000, 1))
        result = "delivered" if outcome.delivered else "retry" if outcome.retry else "failed"
        self._observe(result, began)
        tracing.annotate({"task.attempt": attempt, "webhook.result": outcome.detail})
        if outcome.delivered:
            await msg.ack()
            self.counters.delivered += 1
            log.info("webhook_delivered", **fields)
            await self._record(status, "delivered", attempt, outcome.detail)
        elif outcome.retry and attempt < self.settings.webhook_max_attempts:
            delay = backoff_s(attempt, self.settings.webhook_retry_base_s, MAX_BACKOFF_S)
            await msg.nak(delay=delay)
            self.counters.retried += 1
            log.info("webhook_retry", delay_s=round(delay, 3), **fields)
            await self._record(status, "retrying", attempt, outcome.detail)
        else:
            await msg.term()
            self.counters.failed += 1
            log.error("webhook_failed", event_id=event_id, max_attempts=self.settings.webhook_max_attempts, **fields)
            await self._record(status, "failed", attempt, outcome.detail)
        return result

    def _observe(self, outcome: str, began: float) -> None:
        if self.metrics is not None:
            self.metrics.observe(STAGE_LABEL, outcome, time.monotonic() - began)

    async def _record(self, ended: TaskStatus, state: str, attempt: int, detail: str) -> None:
        """Write the attempt's outcome into the task's status; best effort (the webhook is answered for)."""
        try:
            await self.store.update(ended.task_id, lambda s: s.record_callback(ended.run, state, attempt, detail))
        except TaskGoneError:
            pass  # deleted since it ended: nobody can read the record
        except Exception as exc:
            log.warning("callback_record_failed", task_id=ended.task_id, error=repr(exc))


async def start(topology: Topology, settings: Settings, worker_id: str, metrics: WorkerMetrics) -> Running:
    """The notifier and its callback client (the same SSRF rules as the stages' task URLs)."""
    policy = AddressPolicy.from_settings(settings, s3_endpoint=s3_endpoint())
    client = guarded_client(policy, role="callback", timeout=httpx.Timeout(settings.webhook_timeout_s))
    return Running(Notifier(topology, settings, client, metrics), aclose=client.aclose, stage=STAGE_LABEL)


def main() -> None:
    run(serve(SERVICE, start))

"""The notifier: POSTs a task's final status to its `callback_url` once the task has ended.

A durable pull consumer ("notifier") on the terminal events (task.events.>, each the whole status)
reads every ended task; one without a callback is acknowledged at once. A delivery that may pass
later (a 5xx, 408, 425 or 429 answer, a timeout, a refused connection) is retried with exponential
backoff through `nak(delay)`, up to TM_WEBHOOK_MAX_ATTEMPTS attempts; then, or at once for an answer
no retry changes (another 4xx, a redirect, an address the SSRF rules refuse, a URL httpx cannot send
to), a `webhook_failed` log line records the task, the URL and the last error, and the message is
terminated. A delivery error nobody expected is retried like a 5xx. Each attempt's
outcome is also written to the task's status (`callback`: retrying, delivered or failed, attempts, last
result), after the message is answered, so a slow state write can never cause a second delivery.

Several notifiers share the consumer (each event goes to one of them); a durable consumer keeps its
place, so a task that ends while no notifier runs still gets its callback when one starts.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass

import httpx
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from services.notifier.delivery import deliver
from shared.config import Settings
from shared.egress import s3_endpoint, safe_url
from shared.logging import configure_logging
from shared.metrics import WorkerMetrics
from shared.nats import Topology, connect, declare
from shared.netguard import AddressPolicy
from shared.presence import VERSION, make_worker_id, presence
from shared.stage import backoff_s
from shared.state import TaskStatus
from shared.tasks import TaskGoneError, TaskStore
from shared.transport import guarded_client
from shared.wire import EVENTS_STREAM, EVENTS_SUBJECTS, terminal_event_id

CONSUMER = "notifier"
SERVICE = "notifier"
STAGE_LABEL = "notify"  # its deliveries in the workers' tm_stage_* metrics, as if it were a stage
FETCH_WAIT_S = 1.0
MAX_BACKOFF_S = 600.0  # a receiver may be down for a while: webhook retries wait longer than stage retries
log = structlog.get_logger()


def consumer_config(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=CONSUMER,
        description="Webhook deliveries (services/notifier)",
        filter_subject=EVENTS_SUBJECTS,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.webhook_timeout_s * 2 + 5,
        max_deliver=settings.webhook_max_attempts + 3,  # attempts are counted here; this stops a crash loop
        max_ack_pending=-1,
        num_replicas=settings.replicas,
    )


@dataclass
class NotifierCounters:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0  # ended tasks without a callback_url


class Notifier:
    def __init__(
        self,
        topology: Topology,
        settings: Settings,
        client: httpx.AsyncClient,
        worker_id: str,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.topology = topology
        self.metrics = metrics
        self.settings = settings
        self.client = client
        self.worker_id = worker_id
        self.counters = NotifierCounters()
        self.store = TaskStore.of(topology)
        self.in_flight: set[str] = set()
        self._stopping = asyncio.Event()
        if metrics is not None:
            metrics.watch_in_flight(STAGE_LABEL, lambda: len(self.in_flight))

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Take events, at most `concurrency` deliveries at a time, until stopped; then finish them."""
        js = self.topology.js
        try:
            await js.add_consumer(EVENTS_STREAM, consumer_config(self.settings))
        except BadRequestError as exc:  # exists with other settings: keep it (like the stage consumers)
            log.warning("consumer_config_differs", consumer=CONSUMER, error=str(exc))
        sub = await js.pull_subscribe_bind(durable=CONSUMER, stream=EVENTS_STREAM)
        works: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                if len(works) >= self.settings.concurrency:
                    await asyncio.wait(works, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(batch=1, timeout=FETCH_WAIT_S)
                except nats.errors.TimeoutError:
                    continue
                except Exception as exc:  # NATS unavailable: the client reconnects
                    log.warning("take_failed", error=str(exc))
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    work = asyncio.create_task(self.process(msg))
                    works.add(work)
                    work.add_done_callback(works.discard)
        finally:
            if works:
                await asyncio.wait(works, timeout=self.settings.shutdown_grace_s)
            await sub.unsubscribe()

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
        attempt = msg.metadata.num_delivered or 1
        event_id = (msg.headers or {}).get("Nats-Msg-Id") or terminal_event_id(
            status.task_id, status.run, status.state.value
        )
        self.in_flight.add(status.task_id)
        began = time.monotonic()
        try:
            secret, timeout_s = self.settings.webhook_secret, self.settings.webhook_timeout_s
            outcome = await deliver(self.client, url, status, event_id, secret, deadline_s=timeout_s)
        finally:
            self.in_flight.discard(status.task_id)
        fields = {
            "task_id": status.task_id,
            "state": status.state.value,
            "callback_url": safe_url(url),
            "attempt": attempt,
            "result": outcome.detail,
            "duration_ms": round((time.monotonic() - began) * 1000, 1),
        }
        if self.metrics is not None:
            outcome_label = "delivered" if outcome.delivered else "retry" if outcome.retry else "failed"
            self.metrics.observe(STAGE_LABEL, outcome_label, time.monotonic() - began)
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

    async def _record(self, ended: TaskStatus, state: str, attempt: int, detail: str) -> None:
        """Write the attempt's outcome into the task's status; best effort (the webhook is answered for)."""
        try:
            await self.store.update(ended.task_id, lambda s: s.record_callback(ended.run, state, attempt, detail))
        except TaskGoneError:
            pass  # deleted since it ended: nobody can read the record
        except Exception as exc:
            log.warning("callback_record_failed", task_id=ended.task_id, error=repr(exc))


async def serve() -> None:
    settings = Settings()
    configure_logging(SERVICE)
    nc = await connect(settings, name=SERVICE)
    topology = await declare(nc, settings)
    policy = AddressPolicy.from_settings(settings, s3_endpoint=s3_endpoint())
    client = guarded_client(policy, role="callback", timeout=httpx.Timeout(settings.webhook_timeout_s))
    worker_id = make_worker_id(SERVICE)
    metrics = WorkerMetrics(SERVICE, worker_id, VERSION)
    notifier = Notifier(topology, settings, client, worker_id, metrics)
    metrics_url = metrics.serve(settings.metrics_host, settings.metrics_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, notifier.stop)

    def details() -> dict[str, object]:
        return {
            "concurrency": settings.concurrency,
            "in_flight": sorted(notifier.in_flight),
            "counters": vars(notifier.counters),
            "metrics_url": metrics_url,
        }

    began = time.monotonic()
    log.info("service_started", worker_id=worker_id, nats_url=settings.nats_url, metrics_url=metrics_url)
    try:
        async with presence(topology.workers, SERVICE, worker_id, settings.heartbeat_s, details):
            await notifier.run()
    finally:
        await client.aclose()
        await nc.drain()
        log.info("service_stopped", uptime_s=round(time.monotonic() - began, 1), **vars(notifier.counters))


def main() -> None:
    asyncio.run(serve())

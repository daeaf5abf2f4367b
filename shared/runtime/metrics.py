"""A stage process's own Prometheus endpoint: what its StageRunner did, and who it is.

Every stage service (`shared/runtime/service.py`) builds one `WorkerMetrics` with a registry of its own (never
prometheus_client's global one, so tests can run several in one process) and serves it over HTTP on
`TM_METRICS_HOST`:`TM_METRICS_PORT`: loopback by default, since the page has no authentication (a
deployment scraped from elsewhere sets 0.0.0.0, as the container images do), and port 0 by default, an
ephemeral one, so any number of instances share a host. The URL goes into the worker's heartbeat as
`metrics_url`. A service adds its own collectors (the upscaler's GPU memory and engine counters)
through its StageHandler's `collectors` (shared/runtime/service.py). The notifier counts its deliveries here too,
as the stage "notify".

    tm_stage_duration_seconds{stage,outcome}   histogram: time per message, as the stage_outcome log line
    tm_stage_messages_total{stage,outcome}     counter: outcome = succeeded|failed|retried|dropped|handed_back|error
    tm_stage_retries_total{stage}              counter: messages handed back with a nak to be retried
    tm_stage_in_flight{stage}                  gauge: messages being worked on now (read at scrape time)
    tm_worker_info{service,worker_id,version,host}  gauge, always 1
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import Collector

# Stage handlers run from milliseconds (a fetch from a nearby server) to minutes (a large image on a CPU).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# The runner's outcome words, as the metric's label values (the StageCounters field names).
OUTCOMES = {"success": "succeeded", "failure": "failed", "retry": "retried"}
_WILDCARDS = ("", "0.0.0.0", "::")


class WorkerMetrics:
    """The metrics of one stage process, in a registry of its own."""

    def __init__(self, service: str, worker_id: str, version: str, host: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.duration = Histogram(
            "tm_stage_duration_seconds",
            "Time a stage worked on one message, by outcome",
            ["stage", "outcome"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.messages = Counter(
            "tm_stage_messages",
            "Messages a stage finished with, by outcome",
            ["stage", "outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "tm_stage_retries", "Messages handed back with a delay to be retried", ["stage"], registry=self.registry
        )
        self.in_flight = Gauge(
            "tm_stage_in_flight", "Messages the stage is working on now", ["stage"], registry=self.registry
        )
        info = Gauge(
            "tm_worker_info",
            "This worker process (always 1)",
            ["service", "worker_id", "version", "host"],
            registry=self.registry,
        )
        info.labels(service, worker_id, version, host or socket.gethostname()).set(1)
        self._server: WSGIServer | None = None

    def watch_in_flight(self, stage: str, count: Callable[[], int]) -> None:
        """Read the stage's in-flight count from `count` at every scrape (no bookkeeping on the hot path)."""
        self.in_flight.labels(stage).set_function(lambda: float(count()))

    def observe(self, stage: str, outcome: str, seconds: float) -> None:
        """Count one message the runner finished with `outcome` ("success", "retry", ...) after `seconds`."""
        label = OUTCOMES.get(outcome, outcome)
        self.messages.labels(stage, label).inc()
        self.duration.labels(stage, label).observe(seconds)
        if label == "retried":
            self.retries.labels(stage).inc()

    def register(self, collector: Collector) -> None:
        """Add a service's own collector (collected at scrape time) to this registry."""
        self.registry.register(collector)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve /metrics on `host`:`port` (0: any free port) from a daemon thread; returns its URL.

        The URL names this machine's hostname when listening on every interface, so other hosts (the
        dashboard, an operator) can use it as it is.
        """
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        bound = self._server.server_port
        name = socket.gethostname() if host in _WILDCARDS else host
        if ":" in name:
            name = f"[{name}]"  # an IPv6 literal
        return f"http://{name}:{bound}/metrics"

    def close(self) -> None:
        """Stop serving (tests; a service just exits)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

"""OpenTelemetry tracing: one trace per task run, carried from process to process in NATS message headers.

Off unless OpenTelemetry's standard variables ask for it. Off, nothing here runs beyond a look at `ENABLED`:
no span is made, no header written, and the SDK is not even imported. On when

    OTEL_TRACES_EXPORTER=otlp, or
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set and OTEL_TRACES_EXPORTER is not,

never with OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none. (The specification's default exporter is otlp
to localhost:4318: a process nobody configured would send there, and log the failures, for ever.) The rest is
the SDK's own reading of OTEL_*: endpoint, headers, timeout, compression, sampler (OTEL_TRACES_SAMPLER),
batching (OTEL_BSP_*), propagators (OTEL_PROPAGATORS; W3C trace context and baggage by default), resource
(OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES). The SDK and its OTLP/HTTP exporter are the `otel` extra
(pip install 'task-manager[otel]'); a process asked to trace without them says so in one
`tracing_unavailable` line and runs untraced.

One task run is one trace:

    POST /api/v1/tasks                  api         child of the client's `traceparent` when it sent one
    └─ queue fetch                      fetcher     from when the message was stored until a worker took it
       └─ fetch                         fetcher     state write, handler, the next stage's publish, ack
          └─ queue classify             classifier
             └─ classify                classifier
                └─ queue upscale        upscaler
                   └─ upscale           upscaler    tile batches summarised in upscale.* attributes
                      └─ queue upload   uploader
                         └─ upload      uploader
                            └─ webhook  notifier    one span per delivery attempt

The context travels as `traceparent`/`tracestate` headers of the work messages (shared/wire.py `enqueue`)
and of the terminal event (the webhook's parent). A retry or a dead-letter replay is a new run and a new trace,
rooted in the request that started it; its `trace_id` replaces the ended run's in the task's status.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from nats.aio.msg import Msg

ENABLED = False  # set once by setup(); every hook elsewhere checks it before calling in here
NAMESPACE = "task-manager"
# The requests that start task work get a server span: submit, retry, revoke (REST and dashboard buttons).
TRACED_POSTS = ("/api/v1/tasks", "/dashboard/tasks/")
FAILED_OUTCOMES = frozenset({"failure", "failed", "error", "retry"})  # an attempt that did not succeed
_tracer: Any = None
_provider: Any = None
log = structlog.get_logger()


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables in `env` ask for traces to be exported (see the module docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()}
    if exporters:
        return "otlp" in exporters
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup(service: str, version: str, instance_id: str) -> bool:
    """Start exporting this process's spans when OTEL_* asks for it (once per process); whether it does."""
    global ENABLED, _tracer, _provider
    if _provider is not None or not wanted(os.environ):
        return ENABLED
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("tracing_unavailable", reason="pip install 'task-manager[otel]'", error=str(exc))
        return False
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in (None, "", "http/protobuf"):
        log.warning("tracing_protocol_unsupported", protocol=protocol, using="http/protobuf")
    # Ours unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say otherwise; the instance is the worker id
    # of the heartbeats and log lines.
    ours = {
        "service.name": service,
        "service.namespace": NAMESPACE,
        "service.version": version,
        "service.instance.id": instance_id,
    }
    configured = OTELResourceDetector().detect().attributes
    resource = Resource.create({key: value for key, value in ours.items() if key not in configured})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # Not made the global provider: FastAPI traces every request through that one (the health checks, the
    # dashboard's polls, hour-long event streams); the spans here are the task's.
    _provider, _tracer = provider, provider.get_tracer(NAMESPACE, version)
    ENABLED = True
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    log.info("tracing_on", service_name=resource.attributes.get("service.name"), endpoint=endpoint)
    return True


def shutdown() -> None:
    """Send the spans still buffered (at the process's end)."""
    if _provider is not None:
        _provider.shutdown()


def inject(headers: dict[str, str]) -> None:
    """Write the current span's context into a message's `headers` (traceparent, tracestate)."""
    from opentelemetry import propagate

    propagate.inject(headers)


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), None when tracing is off or no span is current."""
    if not ENABLED:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    return _span_trace_id(span) if span.get_span_context().is_valid else None


def annotate(attributes: Mapping[str, str | int | float | bool]) -> None:
    """Add attributes to the current span (a handler's summary of its work); nothing when tracing is off."""
    if ENABLED:
        from opentelemetry import trace

        trace.get_current_span().set_attributes(attributes)


@contextmanager
def consuming(stage: str, msg: Msg, task_id: str, run: int) -> Iterator[Any]:
    """The spans of a message `stage` took: its wait in the queue, from when the stream stored it until now,
    then its handling, current inside the block (so what it publishes carries it), with the block's log lines
    carrying its trace_id. A message without a traceparent (sent while tracing was off, or by the command
    line) starts a trace of its own."""
    from opentelemetry import propagate, trace

    metadata = msg.metadata
    attributes = {
        "task.id": task_id,
        "task.run": run,
        "task.stage": stage,
        "task.attempt": metadata.num_delivered or 1,
        "messaging.system": "nats",
        "messaging.destination.name": msg.subject,
    }
    parent = propagate.extract(msg.headers or {})
    now = time.time_ns()
    if metadata.timestamp is not None:
        # Stamped by the server's clock: a skew between hosts must not give a wait that ends before it began.
        began = min(int(metadata.timestamp.timestamp() * 1e9), now)
        wait = _tracer.start_span(f"queue {stage}", context=parent, start_time=began, attributes=attributes)
        wait.end(end_time=now)
        parent = trace.set_span_in_context(wait, parent)
    kind = trace.SpanKind.CONSUMER
    with (
        _tracer.start_as_current_span(stage, context=parent, kind=kind, start_time=now, attributes=attributes) as span,
        structlog.contextvars.bound_contextvars(trace_id=_span_trace_id(span)),
    ):
        yield span


@contextmanager
def delivering(headers: Mapping[str, str] | None, attributes: dict[str, Any]) -> Iterator[Any]:
    """The span of one webhook delivery attempt, a child of the context its terminal event carried (the span
    that ended the task), current inside the block, whose log lines carry its trace_id."""
    from opentelemetry import propagate, trace

    parent = propagate.extract(headers or {})
    kind = trace.SpanKind.CLIENT
    with (
        _tracer.start_as_current_span("webhook", context=parent, kind=kind, attributes=attributes) as span,
        structlog.contextvars.bound_contextvars(trace_id=_span_trace_id(span)),
    ):
        yield span


def outcome(span: Any, result: str, detail: str | None = None) -> None:
    """Record how a message ended on its span: task.outcome, and an error status for a failed attempt."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("task.outcome", result)
    if result in FAILED_OUTCOMES:
        span.set_status(Status(StatusCode.ERROR, detail or result))


def _span_trace_id(span: Any) -> str:
    return format(span.get_span_context().trace_id, "032x")


class TraceRequests:
    """ASGI middleware (the API, installed only while tracing is on): a server span for each POST that starts
    task work (TRACED_POSTS), a child of the client's `traceparent`; the request's log lines carry its trace_id."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(TRACED_POSTS):
            await self.app(scope, receive, send)
            return
        from opentelemetry import propagate, trace

        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        answered: list[int] = []

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])
            await send(message)

        kind, attributes = trace.SpanKind.SERVER, {"http.request.method": "POST", "url.path": scope["path"]}
        context = propagate.extract(headers)
        with _tracer.start_as_current_span("POST", context=context, kind=kind, attributes=attributes) as span:
            with structlog.contextvars.bound_contextvars(trace_id=_span_trace_id(span)):
                await self.app(scope, receive, sending)
            route = getattr(scope.get("route"), "path", None)  # the template (/api/v1/tasks/{task_id}/retry)
            span.update_name(f"POST {route or scope['path']}")
            if route:
                span.set_attribute("http.route", route)
            if answered:
                span.set_attribute("http.response.status_code", answered[0])
                if answered[0] >= 500:
                    span.set_status(trace.Status(trace.StatusCode.ERROR))

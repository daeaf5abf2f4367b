"""OpenTelemetry across the real processes: one trace per task run, from the client's traceparent through
every stage's queue wait and handling to the webhook, exported over OTLP/HTTP to a receiver the test runs;
and with OTEL_* unset, no header written and nothing exported."""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import nats
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import system_env
from tests.e2e.images import photo
from tests.notifier.receiver import Receiver
from tests.servers import NatsServer, S3Server, StaticHTTPServer
from tests.system import NOTIFIER, STAGE_SERVICES, System

TASK = "image_super_resolution_pipeline"
STAGES = ("fetch", "classify", "upscale", "upload")
SERVICE_OF = {"fetch": "fetcher", "classify": "classifier", "upscale": "upscaler", "upload": "uploader"}


@dataclass
class Span:
    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, object] = field(default_factory=dict)


def _value(any_value) -> object:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP receiver on 127.0.0.1: every span POSTed to /v1/traces, decoded with opentelemetry-proto
    and handed to the test's event loop (no polling)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.spans: list[Span] = []
        self.arrivals: asyncio.Queue[list[Span]] = asyncio.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                spans = decode(ExportTraceServiceRequest.FromString(body)) if self.path == "/v1/traces" else []
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                receiver.loop.call_soon_threadsafe(receiver.arrivals.put_nowait, spans)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    async def until(self, names: set[str], timeout_s: float) -> list[Span]:
        """Every span received, once spans of all `names` have arrived (AssertionError after `timeout_s`)."""
        try:
            async with asyncio.timeout(timeout_s):
                while not names <= {span.name for span in self.spans}:
                    self.spans += await self.arrivals.get()
        except TimeoutError:
            got = sorted({span.name for span in self.spans})
            raise AssertionError(f"spans missing after {timeout_s} s: {sorted(names - set(got))}; got {got}") from None
        return self.spans

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def decode(request: ExportTraceServiceRequest) -> list[Span]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    Span(
                        name=span.name,
                        service=str(resource.get("service.name")),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                    )
                )
    return spans


def tree(spans: list[Span], root_parent: str) -> str:
    """The spans under `root_parent`, one a line, indented by depth: name (service)."""
    lines: list[str] = []

    def draw(parent: str, depth: int) -> None:
        for span in sorted((s for s in spans if s.parent_id == parent), key=lambda s: s.start_ns):
            lines.append(f"{'  ' * depth}{span.name} ({span.service})")
            draw(span.span_id, depth + 1)

    draw(root_parent, 0)
    return "\n".join(lines)


def without_otel(system: System, **otel: str) -> System:
    """The system's environment with no OTEL_* but `otel` (the test's own environment may set some)."""
    system.env = {name: value for name, value in system.env.items() if not name.startswith("OTEL_")} | otel
    return system


async def follow_work_headers(nats_url: str) -> tuple[nats.NATS, list[dict[str, str]]]:
    """The headers of every work message stored from now on (each stream republishes them: tm.queued.>)."""
    nc = await nats.connect(nats_url)
    seen: list[dict[str, str]] = []

    async def note(msg) -> None:
        seen.append(dict(msg.headers or {}))

    await nc.subscribe("tm.queued.>", cb=note)
    await nc.flush()
    return nc, seen


def log_lines(system: System, name: str) -> list[dict]:
    lines = []
    for line in (system.log_dir / f"{name}.log").read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # a library's plain-text line
    return lines


def parent_of(traceparent: str) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C traceparent header."""
    version, trace_id, parent_id, flags = traceparent.split("-")
    return trace_id, parent_id


async def test_one_trace_holds_every_stage_of_a_task_run(
    own_nats: NatsServer,
    s3_server: S3Server,
    model_dir: Path,
    http_server: StaticHTTPServer,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    otlp = OtlpReceiver()
    hooks = Receiver()
    env = system_env(s3_server, model_dir, TM_CONCURRENCY="1")
    system = without_otel(
        System(own_nats.url, tmp_path / "logs", env),
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url,
        OTEL_BSP_SCHEDULE_DELAY="100",  # ms: spans leave within a tenth of a second
    )
    nc = None
    try:
        await system.start("api", *STAGE_SERVICES, NOTIFIER, timeout_s=120)
        nc, work_headers = await follow_work_headers(system.nats_url)
        client_trace, client_span = secrets.token_hex(16), secrets.token_hex(8)
        source = http_server.add(f"{uuid.uuid4().hex}.png", photo(size=(24, 24)))
        body = {"task_name": TASK, "args": [source, f"s3://{s3_bucket}/{uuid.uuid4().hex}.png"]}
        async with httpx.AsyncClient(base_url=system.api_url, timeout=60) as api:
            response = await api.post(
                "/api/v1/tasks",
                json=body | {"callback_url": hooks.url("/hook")},
                headers={"traceparent": f"00-{client_trace}-{client_span}-01"},
            )
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]
            webhook = await hooks.next(120)
            expected = {"POST /api/v1/tasks", "webhook"} | {n for s in STAGES for n in (s, f"queue {s}")}
            spans = await otlp.until(expected, timeout_s=30)
            status = (await api.get(f"/api/v1/tasks/{task_id}")).json()
    finally:
        if nc is not None:
            await nc.close()
        hooks.stop()
        system.stop()
        otlp.stop()

    assert status["state"] == "SUCCESS", status["error"]
    # One trace, the client's, across all six processes; the API's span is the child of the client's.
    strays = [(span.name, span.service, span.attributes) for span in spans if span.trace_id != client_trace]
    assert not strays
    assert len(spans) == len(expected), sorted(span.name for span in spans)
    assert tree(spans, client_span) == "\n".join(
        [
            "POST /api/v1/tasks (api)",
            "  queue fetch (fetcher)",
            "    fetch (fetcher)",
            "      queue classify (classifier)",
            "        classify (classifier)",
            "          queue upscale (upscaler)",
            "            upscale (upscaler)",
            "              queue upload (uploader)",
            "                upload (uploader)",
            "                  webhook (notifier)",
        ]
    )
    by_name = {span.name: span for span in spans}
    for stage in STAGES:
        wait, work = by_name[f"queue {stage}"], by_name[stage]
        assert wait.start_ns <= wait.end_ns == work.start_ns <= work.end_ns  # the wait ends when a worker takes it
        assert work.attributes["task.id"] == task_id and work.attributes["task.outcome"] == "success"
    assert by_name["POST /api/v1/tasks"].attributes["http.response.status_code"] == 202
    assert by_name["upscale"].attributes["upscale.batches"] >= 1
    assert by_name["upscale"].attributes["upscale.model"]
    assert by_name["webhook"].attributes["webhook.result"] == "HTTP 200"

    # The context on the wire: each work message's traceparent names the span that published it, and the
    # webhook request carries the webhook span's.
    publisher = {"fetch": "POST /api/v1/tasks", "classify": "fetch", "upscale": "classify", "upload": "upscale"}
    carried = {h["Nats-Msg-Id"].split(".")[1]: parent_of(h["traceparent"]) for h in work_headers}
    assert carried == {stage: (client_trace, by_name[publisher[stage]].span_id) for stage in STAGES}
    assert parent_of(webhook.headers["traceparent"]) == (client_trace, by_name["webhook"].span_id)

    # The task's status names the trace, and every process's log lines of the task carry it.
    assert status["trace_id"] == client_trace
    for name, event in [("api", "task_submitted"), ("notifier", "webhook_delivered")] + [
        (SERVICE_OF[stage], "stage_outcome") for stage in STAGES
    ]:
        lines = [line for line in log_lines(system, name) if line.get("task_id") == task_id]
        assert any(line["event"] == event and line.get("trace_id") == client_trace for line in lines), (name, lines)
        assert all(line.get("trace_id") in (None, client_trace) for line in lines)


async def test_with_otel_unset_no_header_is_written_and_no_exporter_starts(
    own_nats: NatsServer,
    s3_server: S3Server,
    model_dir: Path,
    http_server: StaticHTTPServer,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    system = without_otel(System(own_nats.url, tmp_path / "logs", system_env(s3_server, model_dir)))
    nc = None
    try:
        await system.start("api", *STAGE_SERVICES, timeout_s=120)
        nc, work_headers = await follow_work_headers(system.nats_url)
        source = http_server.add(f"{uuid.uuid4().hex}.png", photo(size=(24, 24)))
        body = {"task_name": TASK, "args": [source, f"s3://{s3_bucket}/{uuid.uuid4().hex}.png"], "sync": True}
        traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"  # a client's: not continued
        async with httpx.AsyncClient(base_url=system.api_url, timeout=120) as api:
            response = await api.post("/api/v1/tasks", json=body, headers={"traceparent": traceparent})
        await nc.flush()
    finally:
        if nc is not None:
            await nc.close()
        system.stop()

    assert response.status_code == 200, response.text
    status = response.json()
    assert status["state"] == "SUCCESS", status["error"]
    assert status["trace_id"] is None
    assert len(work_headers) == len(STAGES)
    assert not [headers for headers in work_headers if "traceparent" in headers or "tracestate" in headers]
    for name in ("api", *STAGE_SERVICES):
        lines = log_lines(system, name)
        assert lines, name
        assert not [line for line in lines if line["event"].startswith("tracing_") or "trace_id" in line], name

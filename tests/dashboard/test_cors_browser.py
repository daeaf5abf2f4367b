"""A browser page on another origin uses the API (TM_CORS_ORIGINS), in a real headless Chromium.

The page is served by a static HTTP server of its own (another port: another origin). Its script
submits a task with fetch() and follows it with EventSource to SUCCESS through a TCP relay the test
cuts once the first event is in: the EventSource reconnects by itself with `Last-Event-ID` and gets
every later event exactly once. A second EventSource resumes with `?last_event_id=`. A page on an
origin not on the list cannot submit (fetch fails with a CORS error) nor follow a task. With API keys,
a page sends `X-API-Key` with fetch() and reads the stream from fetch() too (EventSource cannot send
headers). Chromium and playwright as in tests/dashboard/test_browser.py; skips cleanly without them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import KEY_1, api_only
from tests.conftest import system_env
from tests.dashboard.conftest import TASK, png
from tests.dashboard.test_browser import CHROMIUM, chromium_page
from tests.servers import NatsServer, S3Server, StaticHTTPServer
from tests.system import STAGE_SERVICES, System

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")

# The page's script: submit, then follow with EventSource until SUCCESS; a second EventSource
# resumes after the first event with the query parameter. `window.report` is what the test reads.
FOLLOWER = """<!doctype html>
<html><head><meta charset="utf-8"><title>another origin</title></head><body><pre id="log"></pre><script>
const config = %s;
const report = window.report = {events: [], opens: 0, errors: 0, resumed: [], state: "starting"};
function follow(url, into, opened) {
  return new Promise((resolve) => {
    const source = new EventSource(url);
    source.onopen = () => { if (opened) report.opens++; };
    source.onerror = () => { report.errors++; if (source.readyState === EventSource.CLOSED) resolve("closed"); };
    for (const kind of ["state", "stage", "retry", "progress"]) {
      source.addEventListener(kind, (event) => {
        const data = JSON.parse(event.data);
        into.push({id: event.lastEventId, kind, state: data.state});
        if (["SUCCESS", "FAILURE", "REVOKED", "TIMEOUT"].includes(data.state)) { source.close(); resolve(data.state); }
      });
    }
  });
}
async function run() {
  let answer;
  try {
    answer = await fetch(config.api + "/api/v1/tasks", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(config.body),
    });
  } catch (error) {
    report.state = "fetch failed: " + error.name;
    report.ended = await follow(config.api + "/api/v1/tasks/" + config.known + "/events", [], false);
    return;
  }
  report.taskId = (await answer.json()).task_id;
  const events = config.api + "/api/v1/tasks/" + report.taskId + "/events";
  report.state = await follow(events, report.events, true);
  report.resumedState = await follow(events + "?last_event_id=" + report.events[0].id, report.resumed, false);
  document.getElementById("log").textContent = JSON.stringify(report, null, 1);
}
run();
</script></body></html>
"""

# With keys: fetch() carries X-API-Key, and reads the SSE body itself until the first event is in.
KEYED = """<!doctype html>
<html><head><meta charset="utf-8"></head><body><script>
const config = %s;
window.report = {state: "starting"};
async function run() {
  const headers = {"X-API-Key": config.key};
  const denied = await fetch(config.api + "/api/v1/tasks", {method: "POST", body: JSON.stringify(config.body),
    headers: {"Content-Type": "application/json"}});
  report.denied = [denied.status, denied.headers.get("WWW-Authenticate")];
  const answer = await fetch(config.api + "/api/v1/tasks", {method: "POST", body: JSON.stringify(config.body),
    headers: {...headers, "Content-Type": "application/json", "Idempotency-Key": config.idempotency}});
  report.submitted = answer.status;
  const taskId = report.taskId = (await answer.json()).task_id;
  const stream = await fetch(config.api + "/api/v1/tasks/" + taskId + "/events", {headers});
  const reader = stream.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\\ndata: ")) {
    const {value, done} = await reader.read();
    if (done) throw new Error("the stream ended before its first event");
    text += value;
  }
  await reader.cancel();
  report.firstEvent = JSON.parse(text.split("\\ndata: ")[1].split("\\n")[0]);
  // Resuming with the header from fetch() takes a preflight for Last-Event-ID: allowed.
  const lastId = text.split("id: ")[1].split("\\n")[0];
  const resumed = await fetch(config.api + "/api/v1/tasks/" + taskId + "/events",
    {headers: {...headers, "Last-Event-ID": lastId}});
  report.resumed = [resumed.status, resumed.headers.get("Content-Type")];
  await resumed.body.cancel();
  report.state = "done";
}
run().catch((error) => { report.state = "failed: " + error; });
</script></body></html>
"""


class CuttableRelay:
    """A TCP relay to the API whose open connections the test cuts at once (a dropped network), and
    which keeps the bytes of every request so the test sees the headers the browser sent."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sent: list[bytes] = []  # what clients sent, chunk by chunk (a request's head comes whole)
        self.lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._all: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self._open += [client, upstream]
                self._all += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self.lock:
                        self.sent.append(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _shut(source, sink)

    def cut(self) -> None:
        """Close every connection open now, both ways; new ones are relayed as before."""
        with self.lock:
            cutting, self._open = self._open, []
        _shut(*cutting)

    def requests(self) -> list[dict[str, str]]:
        """The request line (`line`) and headers (lower-case names) of every request seen."""
        with self.lock:
            chunks = list(self.sent)
        found = []
        for chunk in chunks:
            lines = chunk.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            if lines[0].split(" ")[0] in ("GET", "POST", "OPTIONS", "DELETE", "HEAD"):
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                found.append({"line": lines[0], **{name.lower(): value for name, value in headers.items()}})
        return found

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            _shut(*self._all)
            for sock in self._all:
                sock.close()


def _shut(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


@pytest.fixture
def pages(tmp_path: Path) -> Iterator[tuple[StaticHTTPServer, StaticHTTPServer]]:
    """Two page servers: two more origins (the first allowed, the second not)."""
    with StaticHTTPServer(tmp_path / "allowed") as allowed, StaticHTTPServer(tmp_path / "refused") as refused:
        yield allowed, refused


def origin(server: StaticHTTPServer) -> str:
    return server.url("").rstrip("/")


def put_page(server: StaticHTTPServer, template: str, config: dict) -> str:
    return server.add(f"{uuid.uuid4().hex}.html", (template % json.dumps(config)).encode())


def test_a_page_on_another_origin_follows_a_task_to_success_across_a_dropped_connection(
    own_nats: NatsServer,
    s3_server: S3Server,
    model_dir: Path,
    pages: tuple[StaticHTTPServer, StaticHTTPServer],
    tmp_path: Path,
) -> None:
    allowed, refused = pages
    env = system_env(s3_server, model_dir, TM_CONCURRENCY="1", TM_CORS_ORIGINS=origin(allowed))
    system = System(own_nats.url, tmp_path / "logs", env)
    relay: CuttableRelay | None = None
    try:
        asyncio.run(system.start("api", *STAGE_SERVICES))
        relay = CuttableRelay(system.api_port)
        # The input is served slowly (3 s), so the task is still running when the connection is cut.
        name = f"{uuid.uuid4().hex}.png"
        allowed.add(name, png())
        body = {"task_name": TASK, "args": [allowed.url(f"slow/3000/{name}"), (tmp_path / "out.png").as_uri()]}
        page_url = put_page(allowed, FOLLOWER, {"api": relay.url, "body": body})
        with chromium_page([], (800, 600), console=False) as page:
            page.goto(page_url, wait_until="load", timeout=30_000)
            page.wait_for_function("window.report.events.length >= 1", timeout=60_000)
            relay.cut()  # the first stream, mid-task
            page.wait_for_function("window.report.resumedState !== undefined", timeout=120_000)
            report = page.evaluate("window.report")
            page.screenshot(path=str(tmp_path / "page.png"))

        assert report["state"] == "SUCCESS", (report, system.logs())
        assert report["opens"] == 2, report  # one reconnection, made by the EventSource itself
        ids = [int(event["id"]) for event in report["events"]]
        assert ids == sorted(set(ids)), ids  # nothing twice, in order
        # Nothing lost either: exactly the events a fresh stream replays.
        replay = httpx.get(f"{system.api_url}/api/v1/tasks/{report['taskId']}/events", timeout=60).text
        assert ids == [int(line[4:]) for line in replay.splitlines() if line.startswith("id: ")]
        assert [event["state"] for event in report["events"]][-1] == "SUCCESS"

        seen = relay.requests()
        events_path = f"/api/v1/tasks/{report['taskId']}/events"
        streams = [r for r in seen if r["line"].startswith(f"GET {events_path} ")]
        assert len(streams) == 2, streams
        assert "last-event-id" not in streams[0] and all(r["origin"] == origin(allowed) for r in streams)
        resumed_after = int(streams[1]["last-event-id"])
        assert resumed_after in ids[:-1], (resumed_after, ids)  # it came back after an event it had
        # Chromium sends an EventSource's own Last-Event-ID without a preflight (a fetch() that sets it
        # asks first: the keyed test below); the JSON POST took one.
        assert not [r for r in seen if r["line"].startswith(f"OPTIONS {events_path}")]
        assert any(r["line"].startswith("OPTIONS /api/v1/tasks ") for r in seen)  # the JSON POST's preflight

        # The second EventSource named its resume point in the URL: everything after the first event.
        assert [int(event["id"]) for event in report["resumed"]] == ids[1:]
        assert report["resumedState"] == "SUCCESS"

        # The same page on an origin not on the list: the browser refuses the answers to it.
        refused_url = put_page(refused, FOLLOWER, {"api": relay.url, "body": body, "known": report["taskId"]})
        with chromium_page([], (800, 600), console=False) as page:
            page.goto(refused_url, wait_until="load", timeout=30_000)
            page.wait_for_function("window.report.ended !== undefined", timeout=30_000)
            refused_report = page.evaluate("window.report")
        assert refused_report["state"] == "fetch failed: TypeError", refused_report
        assert refused_report["ended"] == "closed" and refused_report["opens"] == 0, refused_report
        # Its preflight reached the API and was refused, so no task was submitted.
        listed = httpx.get(f"{system.api_url}/api/v1/tasks", timeout=30).json()
        assert [task["task_id"] for task in listed["tasks"]] == [report["taskId"]]
    finally:
        if relay is not None:
            relay.close()
        system.stop()


def test_with_api_keys_a_page_sends_its_key_and_reads_the_stream_with_fetch(
    pages: tuple[StaticHTTPServer, StaticHTTPServer], tmp_path: Path
) -> None:
    allowed, _ = pages
    body = {"task_name": TASK, "args": ["https://example.com/in.png", "s3://bucket/out.png"]}
    env = {"TM_CORS_ORIGINS": origin(allowed), "TM_API_KEYS": KEY_1}
    with api_only(tmp_path, **env) as system, chromium_page([], (800, 600), console=False) as page:
        relay = CuttableRelay(system.api_port)  # to see what the browser sent
        try:
            config = {"api": relay.url, "body": body, "key": KEY_1, "idempotency": uuid.uuid4().hex}
            page.goto(put_page(allowed, KEYED, config), wait_until="load", timeout=30_000)
            page.wait_for_function("window.report.state !== 'starting'", timeout=30_000)
            report = page.evaluate("window.report")
            seen = relay.requests()
        finally:
            relay.close()
    assert report["state"] == "done", report
    # One preflight per URL: Chromium keeps each answer (600 s), with the headers it allowed, so the
    # later requests with X-API-Key, Idempotency-Key and Last-Event-ID passed only because it listed them.
    asked = sorted(r["line"].split(" ")[1] for r in seen if r["line"].startswith("OPTIONS "))
    assert asked == ["/api/v1/tasks", f"/api/v1/tasks/{report['taskId']}/events"], asked
    assert report["resumed"] == [200, "text/event-stream; charset=utf-8"], report
    assert report["denied"] == [401, "Bearer"]  # readable by the page: the 401 carries the CORS headers
    assert report["submitted"] == 202
    assert report["firstEvent"]["state"] == "PENDING"

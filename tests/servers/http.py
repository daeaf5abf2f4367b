"""A small static HTTP server in a thread, with routes for failure modes (status codes, flaky, slow, redirects)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    """Routes: /status/<code>[?retry_after=S], /flaky/<n>/<name>, /slow/<ms>/<name>,
    /redirect/<n>/<name>, /nolength/<name>, /put/<name> (PUT stores, GET reads back), else a file."""

    server: _OwnedHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: pytest shows failures, and the requests are recorded on the owner

    def do_GET(self) -> None:
        self._handle(b"")

    def do_PUT(self) -> None:
        self._handle(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _handle(self, body: bytes) -> None:
        owner = self.server.owner
        path, _, query = self.path.partition("?")
        owner.requests.append(RecordedRequest(self.command, path, dict(self.headers.items()), body))
        match unquote(path).strip("/").split("/"):
            case ["status", code]:
                retry_after = parse_qs(query).get("retry_after")
                extra = {"Retry-After": retry_after[0]} if retry_after else {}
                self._reply(int(code), f"status {code}\n".encode(), extra)
            case ["flaky", n, name]:
                with owner.lock:
                    owner.hits[name] += 1
                    failing = owner.hits[name] <= int(n)
                self._reply(503, b"try later\n") if failing else self._final(name, body)
            case ["slow", ms, name]:
                time.sleep(int(ms) / 1000)  # the delay is the behaviour under test
                self._final(name, body)
            case ["redirect", n, name] if int(n) > 0:
                self._reply(302, b"", {"Location": f"/redirect/{int(n) - 1}/{name}"})
            case ["redirect", _, name]:
                self._final(name, body)
            case ["nolength", name]:
                self._final(name, body, with_length=False)
            case ["put", name] if self.command == "PUT":
                owner.store_put(name, body)
                self._reply(200, b"")
            case ["put", name]:
                stored = owner.puts.get(name)
                self._reply(200, stored) if stored is not None else self._reply(404, b"")
            case _:
                self._final(unquote(path).lstrip("/"), body)

    def _final(self, name: str, body: bytes, *, with_length: bool = True) -> None:
        """A PUT that got through is stored under `name`; a GET serves the file `name` from the root."""
        owner = self.server.owner
        if self.command == "PUT":
            owner.store_put(name, body)
            return self._reply(200, b"")
        file = (owner.root / name).resolve()
        if not file.is_relative_to(owner.root.resolve()) or not file.is_file():
            return self._reply(404, b"not found\n")
        self._reply(200, file.read_bytes(), with_length=with_length)

    def _reply(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, *, with_length: bool = True
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if with_length:  # without it, HTTP/1.0 marks the end of the body by closing the connection
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _OwnedHTTPServer(ThreadingHTTPServer):
    owner: StaticHTTPServer


class StaticHTTPServer:
    """A threaded HTTP server on 127.0.0.1 serving `root`, with special paths for failure cases."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[RecordedRequest] = []
        self.puts: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        # Called with the name of every PUT once it is stored, before the client gets its answer
        # (fault tests use it to act at exactly that moment).
        self.on_put: Callable[[str], None] | None = None
        self.lock = threading.Lock()
        self._httpd = _OwnedHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def store_put(self, name: str, body: bytes) -> None:
        self.puts[name] = body
        if self.on_put is not None:
            self.on_put(name)

    def url(self, path: str) -> str:
        """The absolute URL of `path` on this server."""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add(self, name: str, data: bytes) -> str:
        """Write `data` as file `name` under the root and return its URL."""
        (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        (self.root / name).write_bytes(data)
        return self.url(name)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> StaticHTTPServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records every POST and hands
it to the test's event loop (no polling), failing the first N requests of a path when asked."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        owner = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with owner.lock:
            owner.hits[self.path] += 1
            code = owner.answers.get(self.path, {}).get(owner.hits[self.path], 200)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
        owner.received(Delivery(self.path, dict(self.headers.items()), body, code))


class _Server(ThreadingHTTPServer):
    owner: Receiver


class Receiver:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        self.hits: Counter[str] = Counter()
        self.answers: dict[str, dict[int, int]] = {}  # path -> {request number: status}, else 200
        self.lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def received(self, delivery: Delivery) -> None:
        self.loop.call_soon_threadsafe(self.deliveries.put_nowait, delivery)

    async def next(self, timeout_s: float) -> Delivery:
        return await asyncio.wait_for(self.deliveries.get(), timeout_s)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

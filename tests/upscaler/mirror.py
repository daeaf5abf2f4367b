"""A local copy of the Real-ESRGAN release assets over HTTP, as TM_MODEL_MIRROR points at one: the
`<release>/<file>` layout, Range requests, and the failures a download must survive (a connection cut
mid-way, a server that ignores Range, a slow link)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.contracts import catalog


def release_path(name: str) -> str:
    """`<release>/<file>` of official model `name`: its URL without the GitHub prefix."""
    return catalog.get(name).url.removeprefix(catalog.OFFICIAL_URL_PREFIX)


def fake_model(monkeypatch: pytest.MonkeyPatch, name: str, payload: bytes) -> None:
    """Make `payload` the published size and sha256 of `name` for this test (a small stand-in file)."""
    spec = catalog.get(name)
    fake = dataclasses.replace(spec, size_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(catalog.MODELS, name, fake)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        mirror = self.server.mirror
        asked = self.headers.get("Range")
        mirror.ranges_asked.append(asked)
        body = mirror.files.get(self.path.lstrip("/"))
        if body is None:
            self._head(404, 0)
            return
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if match and mirror.honour_range:
            start, status = int(match.group(1)), 206
            if start >= len(body):
                self._head(416, 0, {"Content-Range": f"bytes */{len(body)}"})
                return
        headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"} if status == 206 else {}
        self._head(status, len(body) - start, headers)
        with mirror.lock:
            cut_at, mirror.drop_after = mirror.drop_after, None  # one cut connection, then whole answers
        sent, piece = 0, 16 << 10
        for offset in range(start, len(body), piece):
            chunk = body[offset : offset + piece]
            if cut_at is not None and sent + len(chunk) > cut_at:
                self.wfile.write(chunk[: cut_at - sent])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # the body is shorter than its Content-Length
                self.close_connection = True
                return
            self.wfile.write(chunk)
            sent += len(chunk)
            if mirror.bytes_per_s:
                time.sleep(len(chunk) / mirror.bytes_per_s)  # a slow link is what the test is about

    def _head(self, status: int, length: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        if self.server.mirror.honour_range:
            self.send_header("Accept-Ranges", "bytes")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mirror: ReleaseMirror


class ReleaseMirror:
    """Serves `files` (release path -> bytes) on 127.0.0.1; `url` is what TM_MODEL_MIRROR would be.

    `drop_after`: the next answer stops after this many body bytes and the connection is cut.
    `honour_range` False: Range is ignored (200, the whole file). `bytes_per_s`: a throttled link.
    `ranges_asked`: the Range header of every GET (None: none sent).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges_asked: list[str | None] = []
        self.drop_after: int | None = None
        self.honour_range = True
        self.bytes_per_s = 0
        self.lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.mirror = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/mirror/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def add(self, name: str, payload: bytes) -> None:
        """Serve `payload` where the mirror keeps official model `name`."""
        self.files["mirror/" + release_path(name)] = payload

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

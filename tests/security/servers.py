"""A loopback HTTP server for hostile-input tests: absolute redirects, slow-loris bodies, served bytes,
canned answers (any status, headers and body, for GET and PUT).

tests/servers/http.py's StaticHTTPServer only redirects to its own paths and listens on 127.0.0.1; these
tests also need a redirect to anywhere (169.254.169.254), a body that trickles in forever, answers no
honest server gives (a decompression bomb, a year-long Retry-After, an endless body) and a server on
another loopback address (127.0.0.2), so that one address can be allowlisted while 127.0.0.1 stays refused.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

TRICKLE_INTERVAL_S = 0.05
_ZEROS = bytes(64 * 1024)


@dataclass(frozen=True)
class Reply:
    """A canned answer: `body`, then `zeros` zero bytes streamed without a Content-Length (the body
    ends when the connection closes), so an answer of any size costs the server no memory."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    zeros: int = 0


class _Handler(BaseHTTPRequestHandler):
    """Routes: the canned replies first, then (GET) /redirect?to=<absolute URL>,
    /trickle/<name>[?length=N] (a byte per interval, never done), /<name>."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self._canned():
            self.send_response(405)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _canned(self) -> bool:
        """Answer with the next canned reply for this method and path, if there is one."""
        owner = self.server.owner
        path = urlsplit(self.path).path
        owner.requests.append(f"{self.command} {path}")
        with owner.lock:
            replies = owner.replies.get((self.command, path))
            if not replies:
                return False
            reply = replies.pop(0) if len(replies) > 1 else replies[0]
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if not reply.zeros:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        try:
            self.wfile.write(reply.body)
            left = reply.zeros
            while left > 0 and not owner.stopping.is_set():
                self.wfile.write(_ZEROS[: min(left, len(_ZEROS))])
                left -= len(_ZEROS)
        except OSError:
            pass  # the client stopped reading, as it should
        return True

    def do_GET(self) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        owner.paths.append(parts.path)
        if self._canned():
            return
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts.path.startswith("/trickle/"):
            self.send_response(200)
            if declared := parse_qs(parts.query).get("length"):
                self.send_header("Content-Length", declared[0])
            self.end_headers()  # without a length, the body ends when the connection closes: never
            # Slow-loris: a byte now and then keeps any per-read timeout from firing, forever.
            while not owner.stopping.wait(TRICKLE_INTERVAL_S):
                try:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                except OSError:
                    return  # the client gave up, as it should
        elif (body := owner.files.get(parts.path.lstrip("/"))) is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HostileHTTPServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up mid-body (refusing a large download) is what these tests expect


class HostileHTTPServer:
    """A threaded HTTP server on `host` (any loopback address) with the routes of `_Handler`."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.files: dict[str, bytes] = {}
        self.paths: list[str] = []
        self.replies: dict[tuple[str, str], list[Reply]] = {}
        self.requests: list[str] = []  # "GET /x.png", for the canned routes
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.owner = self
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.host, self.port = host, self._httpd.server_address[1]
        # A short poll, so that stop() (which waits for the loop to notice) is quick.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/{path.lstrip('/')}"

    def add(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return self.url(name)

    def reply(self, method: str, name: str, *replies: Reply) -> str:
        """The URL of `name`, whose `method` requests get `replies` in turn, the last one from then on."""
        with self.lock:
            self.replies[(method, f"/{name.lstrip('/')}")] = list(replies)
        return self.url(name)

    def redirect_to(self, target: str) -> str:
        """A URL on this server that answers 302 with `target` as the Location."""
        return self.url(f"redirect?{urlencode({'to': target})}")

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> HostileHTTPServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

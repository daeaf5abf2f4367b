"""The benchmark's own HTTP server, run as a separate process: serves the input image, swallows PUTs.

It runs in its own process (not a thread of the load generator) so that serving the fetchers'
GETs never competes with the generator's event loop for the GIL, and so its CPU shows up on its own
line. HTTP/1.1 keep-alive, unlike tests/servers/http.py's HTTP/1.0 server, so the fetchers and uploaders
reuse their connections as they would with a real object store or CDN.

    python bench/sink.py FILE        # serves FILE's bytes at every GET path; prints "port <N>" when ready
    python bench/sink.py FILE FILE2  # several: each at /<its name> (404 elsewhere), typed by its suffix

BENCH_SINK_DELAY_MS in the environment delays every GET by that much (a remote origin's latency:
bench/scale.py uses it to make the fetcher an I/O-bound stage).
"""

from __future__ import annotations

import mimetypes
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _SinkServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.server.delay_s:
            time.sleep(self.server.delay_s)  # the latency under test; each request has its own thread
        if self.server.files is None:
            self._reply(self.server.body, "image/png")
            return
        found = self.server.files.get(self.path.lstrip("/"))
        if found is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._reply(*found)

    def do_PUT(self) -> None:
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
        with self.server.lock:
            self.server.puts += 1
        self._reply(b"", "text/plain")

    def _reply(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, body: bytes, files: dict[str, tuple[bytes, str]] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Sink)
        self.body = body
        self.files = files  # name -> (bytes, content type); None: `body` at every path
        self.delay_s = float(os.environ.get("BENCH_SINK_DELAY_MS") or 0) / 1000
        self.puts = 0
        self.lock = threading.Lock()


def main() -> None:
    paths = [Path(arg) for arg in sys.argv[1:]]
    files = None
    if len(paths) > 1:
        files = {p.name: (p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream") for p in paths}
    server = _SinkServer(paths[0].read_bytes(), files)
    print(f"port {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

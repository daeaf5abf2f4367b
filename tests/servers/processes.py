"""Child processes of the test servers: binaries, spawning, log watching, clean-up at exit."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

# Anything still running when the interpreter exits (a crashed session, Ctrl-C) is killed here;
# the fixtures stop their servers first in the normal case.
_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_live):
        if process.poll() is None:
            process.kill()


def find_binary(name: str) -> str:
    """The path of `name` in the venv running the tests (where the PyPI packages put it), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _spawn(args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    _live.add(process)
    return process


def _terminate(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
    _live.discard(process)


class _LogWatcher:
    """Drains a child's output on a thread (so the pipe never fills) and lets callers await a line."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        threading.Thread(target=self._drain, args=(stream,), daemon=True).start()

    def _drain(self, stream: Iterable[bytes]) -> None:
        for raw in stream:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first log line matching `pattern`; RuntimeError with the log if it does not come in time."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    log = "\n".join(self.lines[-40:])
                    why = "exited" if self._closed else f"not seen within {timeout_s}s"
                    raise RuntimeError(f"{pattern!r} {why}; log:\n{log}")
                self._changed.wait(left)


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

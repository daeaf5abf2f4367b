"""The resident memory of a process under test, read from /proc/<pid>/status: now, and at its peak over a span."""

from __future__ import annotations

import threading
from pathlib import Path

SAMPLE_INTERVAL_S = 0.002


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    """VmRSS: what the process holds in memory now."""
    return _status_kib(pid, "VmRSS") * 1024


class PeakRss:
    """The most a process held during the `with` block: sampled every 2 ms, and cross-checked with the
    kernel's own high-water mark (VmHWM, reset on entry through clear_refs), which no sample can miss."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, rss_bytes(self.pid))
            self.samples += 1
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return

    def __enter__(self) -> PeakRss:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak_bytes = max(self.peak_bytes, _status_kib(self.pid, "VmHWM") * 1024)

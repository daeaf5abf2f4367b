"""CPU stand-ins for the CUDA stream and event objects the tile runner uses, for tests that take its CUDA path."""

from __future__ import annotations


class FakeStream:
    def wait_event(self, event: object) -> None:
        pass


class FakeEvent:
    def record(self, stream: object = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

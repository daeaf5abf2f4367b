"""One task's change events, stored ones first and then live ones, without a JetStream consumer.

The SSE endpoint follows one task from a point in the events stream (a `Last-Event-ID`, or the
start). A JetStream consumer per reader would cost a create and a delete request and the server's
bookkeeping for every SSE connection; instead the feed subscribes (core NATS) to the stream's
republished copies of the task's changes (`tm.live.task.changes.<task_id>.*`, each with its stream
sequence in `Nats-Sequence`), then reads what was stored before with direct gets by subject, then
passes on live copies newer than the last one read. The subscription is sent before the first get
on the same connection, so the server has it before it answers: no event falls in between.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from shared.wire import EVENTS_STREAM, live_changes_filter, task_changes_filter

MAX_SEQUENCE = 2**64 - 1  # JetStream's sequences are uint64: nothing is stored after this one


class ChangeFeed:
    """`await feed.next(timeout_s)` -> (event JSON, stream sequence); nats.errors.TimeoutError when none came."""

    def __init__(self, nc: NATS, task_id: str, after: int = 0) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._task_id = task_id
        self._last = after  # the stream sequence of the last event passed on
        self._replaying = after < MAX_SEQUENCE
        self._live: Subscription | None = None

    async def open(self) -> ChangeFeed:
        self._live = await self._nc.subscribe(live_changes_filter(self._task_id))
        return self

    def caught_up(self) -> None:
        """Stop reading stored events: the caller knows every later one comes live (it subscribed first)."""
        self._replaying = False

    async def next(self, timeout_s: float) -> tuple[bytes, int]:
        assert self._live is not None, "open() first"
        if self._replaying:
            subject = task_changes_filter(self._task_id)
            try:
                stored = await self._js.get_msg(
                    EVENTS_STREAM, seq=self._last + 1, subject=subject, next=True, direct=True
                )
            except NotFoundError:
                self._replaying = False
            else:
                self._last = stored.seq or self._last + 1
                self._replaying = self._last < MAX_SEQUENCE
                return stored.data or b"", self._last
        while True:
            msg = await self._live.next_msg(timeout=timeout_s)
            sequence = int((msg.headers or {}).get("Nats-Sequence", "0") or 0)
            if sequence > self._last:  # older ones were read from the stream already
                self._last = sequence
                return msg.data, sequence

    async def close(self) -> None:
        if self._live is not None:
            await self._live.unsubscribe()
            self._live = None

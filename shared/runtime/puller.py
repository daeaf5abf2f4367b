"""Taking the highest-priority waiting message for one stage across the per-priority streams.

Each take is a single no-wait pull request, highest priority first, so a worker never holds a
message it is not about to work on. To avoid asking empty streams, the puller listens (core NATS,
no consumer) to the headers each work stream republishes once it has stored a message: that
"doorbell" marks the message's priority as worth asking. A message this process gave back with a delay (`note_retry`)
marks its priority again when the delay is over. What comes back otherwise (another process's
delayed nak, an expired ack deadline) is found by a full rescan every `rescan_s`, busy or idle. The
process's slots take turns: one asks and waits while the others queue behind it, so a message costs one
pull request (a taken message that was its stream's last, by `num_pending`, leaves no empty ask behind
it) and an idle stage process asks 11 empty streams once a rescan. `num_pending` does not count
messages that come back (a dead worker's, whose ack deadline expired together): a taken message that
came back leaves its priority marked, so the rest of them are taken at once, not one per rescan.
"""

from __future__ import annotations

import asyncio
import json
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.messages import PRIORITIES, Stage
from shared.wire import consumer_name, queued_filter, work_stream

_NO_WAIT = json.dumps({"batch": 1, "no_wait": True}).encode()
RETRY_LOOK_MARGINS_S = (0.05, 0.5, 2.0)


class PriorityPuller:
    def __init__(self, nc: NATS, stage: Stage, rescan_s: float = 5.0, request_timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._stage = stage
        self._rescan_s = rescan_s
        self._request_timeout_s = request_timeout_s
        self._doorbell: Subscription | None = None
        self._inbox: Subscription | None = None
        self._inbox_lock = asyncio.Lock()
        self._rings = 0
        self._ring_of = dict.fromkeys(PRIORITIES, 0)  # last ring count seen per priority
        self._maybe_waiting: set[int] = set(PRIORITIES)
        self._wake = asyncio.Event()
        self._closed = False
        self._turn = asyncio.Lock()
        self._rescanned_at = time.monotonic()

    async def start(self) -> None:
        self._doorbell = await self._nc.subscribe(queued_filter(self._stage), cb=self._on_ring)

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        for subscription in (self._doorbell, self._inbox):
            if subscription is not None:
                await subscription.unsubscribe()
        self._doorbell = self._inbox = None

    def note_retry(self, priority: int, delay_s: float) -> None:
        """A message of `priority` was given back to come again after `delay_s`: look for it then (and
        once more a little later: the server's redelivery timer may fire after ours)."""
        loop = asyncio.get_running_loop()
        for margin_s in RETRY_LOOK_MARGINS_S:
            loop.call_later(delay_s + margin_s, self._mark, priority)

    def _mark(self, priority: int) -> None:
        self._rings += 1
        self._ring_of[priority] = self._rings
        self._maybe_waiting.add(priority)
        self._wake.set()

    async def _on_ring(self, msg: Msg) -> None:
        # Subject: tm.queued.p<priority>.<stage>.<task_id>
        try:
            priority = int(msg.subject.split(".")[2][1:])
        except (IndexError, ValueError):
            return
        self._mark(priority)

    async def _take_from(self, priority: int) -> Msg | None:
        # A delivered message carries its own subject, not the reply inbox, so the client's
        # request() cannot match it to the request: use our own inbox, one request at a time.
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{work_stream(priority)}.{consumer_name(self._stage)}"
        async with self._inbox_lock:
            if self._inbox is None:
                self._inbox = await self._nc.subscribe(self._nc.new_inbox())
            await self._nc.publish(subject, _NO_WAIT, reply=self._inbox.subject)
            try:
                reply = await self._inbox.next_msg(timeout=self._request_timeout_s)
            except TimeoutError:
                # A late answer must not be taken for the next request's: start a new inbox.
                await self._inbox.unsubscribe()
                self._inbox = None
                raise
        if reply.headers and reply.headers.get("Status"):
            return None  # 404 No Messages / 408: nothing waiting
        return reply

    async def take(self) -> Msg | None:
        """The highest-priority waiting message, or None when nothing is waiting."""
        for priority in sorted(self._maybe_waiting, reverse=True):
            ring_before = self._ring_of[priority]
            msg = await self._take_from(priority)
            unchanged = self._ring_of[priority] == ring_before  # no publish raced with the answer
            if msg is not None:
                came_back = msg.metadata.num_delivered > 1  # others may have come back with it
                if msg.metadata.num_pending == 0 and unchanged and not came_back:
                    self._maybe_waiting.discard(priority)  # that was the last one: no empty ask after it
                return msg
            if unchanged:
                self._maybe_waiting.discard(priority)
        return None

    async def next(self) -> Msg | None:
        """Wait for the next message; None once the puller is closed.

        One slot at a time asks and waits (the others queue for the turn): a ring wakes one asker, not
        every idle slot, so a message costs one pull request, and a rescan is made once.
        """
        async with self._turn:
            while not self._closed:
                self._wake.clear()
                self._rescan_when_due()
                rings = self._rings
                msg = await self.take()
                if msg is not None:
                    return msg
                if self._rings != rings or self._closed:
                    continue
                due_in_s = self._rescanned_at + self._rescan_s - time.monotonic()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(due_in_s, 0.0))
                except TimeoutError:
                    pass
        return None

    def _rescan_when_due(self) -> None:
        """Mark every priority once per `rescan_s` for what came back without a ring (see above); timed
        from the last rescan, so a steady stream of rings cannot put it off."""
        if time.monotonic() - self._rescanned_at >= self._rescan_s:
            self._rescanned_at = time.monotonic()
            self._maybe_waiting.update(PRIORITIES)

"""Backpressure: refuse submissions (429) while the work queues hold TM_MAX_QUEUE_DEPTH messages.

The depth is the number of messages stored in the eleven work streams TM_WORK_P0..P10 (queued at
any stage, or held by a worker), read with one stream-info request per stream. A read is reused
for READ_TTL_S, so a burst of submissions costs eleven JetStream API calls a second, not eleven
per request; between reads every submission let through is counted locally, so a burst cannot
overshoot the limit while the cached number is stale. When the streams cannot be read, the last
known depth stands: submission itself answers 503 if NATS is really gone.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from services.api.deps import ContextDep
from services.api.guards.ratelimit import too_many
from shared.messages import PRIORITIES
from shared.nats import Topology
from shared.wire import work_stream

READ_TTL_S = 1.0
QUEUE_FULL_RETRY_AFTER_S = 5
log = structlog.get_logger()


class QueueDepth:
    def __init__(self, topology: Topology, limit: int) -> None:
        self.limit = limit
        self._js = topology.js
        self._depth = 0
        self._read_at = -float("inf")
        self._reading = asyncio.Lock()

    async def current(self) -> int:
        """Messages in the work streams: a read at most READ_TTL_S old plus what was let in since."""
        if time.monotonic() - self._read_at >= READ_TTL_S:
            async with self._reading:  # one read at a time; the requests queued behind it reuse it
                if time.monotonic() - self._read_at >= READ_TTL_S:
                    await self._read()
        return self._depth

    async def _read(self) -> None:
        try:
            infos = await asyncio.gather(*(self._js.stream_info(work_stream(p)) for p in PRIORITIES))
            self._depth = sum(info.state.messages for info in infos)
        except Exception as exc:
            log.warning("queue_depth_unknown", error=repr(exc))
        self._read_at = time.monotonic()

    async def admit(self) -> None:
        """Let one submission in (counting it), or raise a 429 while the queues are full."""
        depth = await self.current()
        if depth >= self.limit:
            raise too_many(
                f"task queues are full ({depth} waiting, limit {self.limit}); retry later", QUEUE_FULL_RETRY_AFTER_S
            )
        self._depth += 1


async def queue_room(ctx: ContextDep) -> None:
    """Dependency of task submission: 429 while the queues are full."""
    await ctx.queue.admit()

"""Taking messages `concurrency` at a time and stopping gracefully: the loop under every worker process,
the stage runner (shared/runtime/stage.py) and the notifier (services/notifier) alike.

    run()              `concurrency` slots; each takes a message from the puller, processes it, takes the next
    stop()             stop taking; the messages in hand get TM_SHUTDOWN_GRACE_S to finish, then the work
                       started with `start_work` is cancelled and `handing_back` is set, so the processing
                       gives its message back (a nak) for another process to take at once
    keep_in_progress   while a message's work runs the message stays this process's (in-progress acks)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

log = structlog.get_logger()
T = TypeVar("T")
TAKE_RETRY_S = 0.5
HAND_BACK_WAIT_S = 10.0


class Puller(Protocol):
    """Where the slots take their messages (shared/runtime/puller.py's PriorityPuller, a DurablePuller)."""

    async def start(self) -> None: ...

    async def next(self) -> Msg | None:
        """The next message, waiting for one; None once closed."""
        ...

    async def close(self) -> None: ...


class DurablePuller:
    """The messages of one durable pull consumer, one pull at a time: the slots take turns asking, so a
    message is never fetched for a slot that has given up waiting."""

    def __init__(self, js: JetStreamContext, stream: str, durable: str, wait_s: float = 1.0) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._wait_s = wait_s  # how long one pull waits: also how soon close() is noticed
        self._sub: JetStreamContext.PullSubscription | None = None
        self._turn = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        self._sub = await self._js.pull_subscribe_bind(durable=self._durable, stream=self._stream)

    async def next(self) -> Msg | None:
        async with self._turn:
            while not self._closed and self._sub is not None:
                try:
                    msgs = await self._sub.fetch(batch=1, timeout=self._wait_s)
                except nats.errors.TimeoutError:
                    continue
                return msgs[0]
        return None

    async def close(self) -> None:
        self._closed = True
        async with self._turn:  # the pull under way ends within wait_s; then nobody uses the subscription
            if self._sub is not None:
                await self._sub.unsubscribe()
                self._sub = None


async def mark_in_progress(msg: Msg) -> None:
    """Reset the message's ack deadline; a failure is logged (the broker may be failing over)."""
    try:
        await msg.in_progress()
    except Exception as exc:
        log.warning("in_progress_failed", error=str(exc))


async def keep_in_progress(
    msg: Msg, work: asyncio.Task[T], every_s: float, check: Callable[[], None] | None = None
) -> T:
    """The result of `work`, marking `msg` in progress every `every_s` until it is done.

    `check` runs before each mark and may raise to give up (a stalled handler): the work is cancelled
    and waited for, then the error raised."""
    try:
        while True:
            done, _ = await asyncio.wait({work}, timeout=every_s)
            if done:
                return work.result()
            if check is not None:
                try:
                    check()
                except Exception:
                    work.cancel()
                    await asyncio.wait({work})
                    raise
            await mark_in_progress(msg)
    finally:
        if not work.done():
            work.cancel()


class Slots:
    """Runs `process(msg)` for the messages of `puller`, `concurrency` at a time, until stopped."""

    def __init__(
        self,
        puller: Puller,
        process: Callable[[Msg], Awaitable[None]],
        concurrency: int,
        grace_s: float,
        label: str,
    ) -> None:
        self._puller = puller
        self._process = process
        self._concurrency = concurrency
        self._grace_s = grace_s
        self._label = label  # the stage (or "notify") in log lines
        self._stopping = asyncio.Event()
        self._works: set[asyncio.Task[Any]] = set()
        self.handing_back = False  # set past the grace period: cancelled work gives its message back

    async def run(self) -> None:
        await self._puller.start()
        slots = [asyncio.create_task(self._slot()) for _ in range(self._concurrency)]
        await self._stopping.wait()
        await self._puller.close()
        _, unfinished = await asyncio.wait(slots, timeout=self._grace_s)
        if unfinished:
            self.handing_back = True  # past the grace period: give the work back to other workers
            for work in list(self._works):
                work.cancel()
            await asyncio.wait(unfinished, timeout=HAND_BACK_WAIT_S)

    def stop(self) -> None:
        """Stop taking messages; messages in hand are finished (or handed back after the grace period)."""
        self._stopping.set()

    def start_work(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run a message's work as a task of its own: the one cancelled when the grace period is over."""
        work = asyncio.create_task(coro)
        self._works.add(work)
        work.add_done_callback(self._works.discard)
        return work

    async def _slot(self) -> None:
        while not self._stopping.is_set():
            try:
                msg = await self._puller.next()
            except Exception as exc:  # NATS unavailable: keep trying, the client reconnects
                log.warning("take_failed", stage=self._label, error=str(exc))
                await asyncio.sleep(TAKE_RETRY_S)
                continue
            if msg is None:
                return
            try:
                await self._process(msg)
            except Exception as exc:  # NATS trouble while answering: the message comes back after its ack wait
                log.exception("process_failed", stage=self._label, subject=msg.subject, error=repr(exc))

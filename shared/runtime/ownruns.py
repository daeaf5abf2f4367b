"""What one stage process is working on and has finished lately, for the redeliveries that reach it.

At-least-once delivery brings a message back when its ack wait runs out, which in-progress acks prevent
unless the broker is away (a node failing over): the same process may then be handed a task it is still
working on, or one whose stage it has just finished (no state write says so yet: the next stage's start
records it). Running it again would do the work twice (two uploads of one output).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Iterator

from nats.aio.msg import Msg

from shared.runtime.consumer import mark_in_progress
from shared.taskstate.store import TaskStore

REMEMBERED_FINISHED = 4096


class OwnRuns:
    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self.in_flight: dict[str, asyncio.Event] = {}  # task_id -> set when this process's run of it ends
        self._finished: OrderedDict[str, int] = OrderedDict()  # task_id -> run whose stage ended here lately

    @contextlib.contextmanager
    def running(self, task_id: str) -> Iterator[None]:
        self.in_flight[task_id] = ended = asyncio.Event()
        try:
            yield
        finally:
            del self.in_flight[task_id]
            ended.set()

    async def wait_for(self, msg: Msg, task_id: str, keepalive_s: float) -> None:
        """Let a delivery of a task this process is still working on wait for that run to end (after it the
        task's state says whether anything is left)."""
        while (ended := self.in_flight.get(task_id)) is not None:
            try:
                await asyncio.wait_for(ended.wait(), timeout=keepalive_s)
            except TimeoutError:
                await mark_in_progress(msg)  # this delivery stays ours while it waits

    async def finished_here(self, task_id: str) -> bool:
        """Whether this process finished this stage of the task's current run (rare: a redelivery)."""
        run = self._finished.get(task_id)
        if run is None:
            return False
        status = await self.store.get(task_id)
        return status is not None and status.run == run

    def remember_finished(self, task_id: str, run: int) -> None:
        self._finished[task_id] = run
        self._finished.move_to_end(task_id)
        if len(self._finished) > REMEMBERED_FINISHED:
            self._finished.popitem(last=False)

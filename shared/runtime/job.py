"""A message being worked on, as a stage's handler sees it (shared/runtime/stage.py runs the handler)."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from shared.messages import Stage, TaskMessage
from shared.taskstate.status import TaskStatus
from shared.taskstate.store import TaskStore


@dataclass
class Job:
    """One message being worked on, as a handler sees it."""

    task: TaskMessage
    status: TaskStatus
    attempt: int
    stage: Stage
    store: TaskStore
    last_activity: float = field(default_factory=time.monotonic)
    waiting_locally: bool = False  # queued inside the process (e.g. for the model): alive, not stalled
    _last_progress_s: float = field(default=0.0)

    def touch(self) -> None:
        """Show the job is alive and moving (the watchdog extends the ack deadline only then)."""
        self.last_activity = time.monotonic()

    async def report_progress(self, fraction: float, min_interval_s: float = 0.25) -> None:
        """Record progress inside this stage; raises TaskFinishedError if the task was ended meanwhile, and
        StaleRunError if it was started again since."""
        self.touch()
        if fraction >= 1.0:
            return  # the next stage's start follows at once and marks this stage's share done
        now = time.monotonic()
        if now - self._last_progress_s < min_interval_s:
            return
        self._last_progress_s = now
        self.status = await self.store.update(self.task.task_id, self._progress(fraction))

    def _progress(self, fraction: float) -> Callable[[TaskStatus], None]:
        def write(status: TaskStatus) -> None:
            status.require_run(self.task.run)  # the task was ended and started again: this run's work is moot
            status.report_progress(self.stage, fraction)

        return write


Handler = Callable[[Job], Coroutine[Any, Any, TaskMessage | None]]

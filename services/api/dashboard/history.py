"""The last hour of the system, in 10-second bins, for the dashboard's charts.

Completions and their latencies come from the task index's view of the task bucket (every API process
keeps one: services/api/tasks/index.py), binned by each task's own completion time, so an API that
starts, restarts or scales out draws the whole last hour at once. Queue depths and GPU memory exist only
as samples: this process takes one every BIN_S seconds and one more whenever the charts are read, so
their lines start when the process did.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import BaseModel, Field

from services.api.dashboard.overview import list_workers
from services.api.tasks.index import TaskSummary
from shared.messages import PIPELINE
from shared.nats import Topology
from shared.queues import QueueSnapshot, snapshot
from shared.taskstate.status import TERMINAL_STATES, TaskState, format_time, parse_time

BIN_S = 10
WINDOW_S = 3600
BINS = WINDOW_S // BIN_S
ENDED = [state.value for state in TaskState if state in TERMINAL_STATES]
PERCENTILES = (50, 95, 99)
log = structlog.get_logger()


class Series(BaseModel):
    name: str
    points: list[float | None] = Field(description=f"one per {BIN_S} s bin, oldest first; null where nothing was seen")


class Chart(BaseModel):
    id: str
    title: str
    unit: str
    series: list[Series]


class HistoryData(BaseModel):
    """The dashboard's charts as data: GET /dashboard/history."""

    bin_s: int
    start: str = Field(description="the start of the first bin")
    end: str = Field(description="the end of the last bin (now, rounded up to a bin)")
    charts: list[Chart]


@dataclass
class _Bin:
    ended: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    queued: dict[str, int] | None = None  # stage -> messages waiting or held, as last sampled in the bin
    gpu_used_mb: dict[str, int] | None = None  # upscaler -> device memory in use, as last sampled


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile of `values` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class History:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._bins: dict[int, _Bin] = {}

    def _bin(self, at: float) -> _Bin | None:
        number = int(at // BIN_S)
        newest = int(self._clock() // BIN_S)
        if number <= newest - BINS or number > newest:
            return None
        if number not in self._bins:
            self._bins[number] = _Bin()
            for old in [n for n in self._bins if n <= newest - BINS]:
                del self._bins[old]
        return self._bins[number]

    def task_changed(self, old: TaskSummary | None, new: TaskSummary) -> None:
        """The task index's hook: count a run's end once, in the bin of its completion time."""
        if not new.state.terminal or new.completed_at is None:
            return
        if old is not None and old.state.terminal and (old.run, old.completed_at) == (new.run, new.completed_at):
            return  # the same ending written again (a webhook's delivery record, ...)
        try:
            ended, submitted = parse_time(new.completed_at), parse_time(new.submitted_at)
        except ValueError:
            return
        found = self._bin(ended.timestamp())
        if found is not None:
            found.ended[new.state.value] += 1
            found.latencies_s.append(max(0.0, (ended - submitted).total_seconds()))

    def sampled(self, queued: dict[str, int], gpu_used_mb: dict[str, int]) -> None:
        found = self._bin(self._clock())
        if found is not None:
            found.queued, found.gpu_used_mb = queued, gpu_used_mb

    def record(self, queues: QueueSnapshot, workers: list[dict[str, Any]]) -> None:
        """A sample from a read already made: the queues and the workers' heartbeat records."""
        self.sampled(
            {s.stage: s.pending + s.ack_pending for s in queues.stages},
            {
                str(w["worker_id"]): int(w["memory_used_mb"])
                for w in workers
                if w.get("service") == "upscaler" and w.get("memory_used_mb") is not None
            },
        )

    async def sample(self, topology: Topology) -> None:
        """Read the queues and the upscalers' device memory now."""
        self.record(*await asyncio.gather(snapshot(topology.js), list_workers(topology)))

    async def sample_forever(self, topology: Topology) -> None:
        while True:
            try:
                await self.sample(topology)
            except Exception as exc:  # NATS away for a moment: a gap in the lines, not a dead sampler
                log.warning("history_sample_failed", error=repr(exc))
            await asyncio.sleep(BIN_S - self._clock() % BIN_S + 0.01)

    def view(self) -> HistoryData:
        newest = int(self._clock() // BIN_S)
        numbers = range(newest - BINS + 1, newest + 1)
        bins = [self._bins.get(n) for n in numbers]
        gpus = sorted({name for b in bins if b and b.gpu_used_mb for name in b.gpu_used_mb})
        charts = [
            Chart(id="completions", title="Completions per second by state", unit="/s", series=[
                Series(name=state, points=[b.ended[state] / BIN_S if b else 0.0 for b in bins]) for state in ENDED
            ]),
            Chart(id="latency", title="Latency, submission to completion", unit="s", series=[
                Series(name=f"p{p}", points=[
                    round(percentile(b.latencies_s, p), 3) if b and b.latencies_s else None for b in bins
                ]) for p in PERCENTILES
            ]),
            Chart(id="queues", title="Queue depth by stage (waiting and in progress)", unit="", series=[
                Series(name=stage.value, points=[
                    b.queued.get(stage.value, 0) if b and b.queued is not None else None for b in bins
                ]) for stage in PIPELINE
            ]),
            Chart(id="gpu", title="GPU memory in use", unit="MB", series=[
                Series(name=name, points=[
                    b.gpu_used_mb.get(name) if b and b.gpu_used_mb is not None else None for b in bins
                ]) for name in gpus
            ]),
        ]  # fmt: skip
        return HistoryData(
            bin_s=BIN_S,
            start=format_time_s(numbers[0] * BIN_S),
            end=format_time_s((newest + 1) * BIN_S),
            charts=charts,
        )


def format_time_s(epoch_s: float) -> str:
    return format_time(datetime.fromtimestamp(epoch_s, UTC))

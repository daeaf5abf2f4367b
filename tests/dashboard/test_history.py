"""The last hour's bins and the SVG drawn from them (pure logic: a fixed clock, no NATS)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from services.api.dashboard.charts import nice_ceiling, render_charts
from services.api.dashboard.history import BIN_S, BINS, History, percentile
from services.api.tasks.index import TaskSummary
from shared.taskstate.status import TaskState

NOW = 1_800_000_000.0  # a bin boundary: 10 s bins, so NOW // BIN_S is the newest bin


def at(seconds_ago: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(NOW - seconds_ago, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def row(task_id: str, state: TaskState, submitted_ago: float, completed_ago: float | None, run: int = 1) -> TaskSummary:
    return TaskSummary(
        task_id=task_id, state=state, priority=5, category=None, model=None, submitted_at=at(submitted_ago),
        completed_at=at(completed_ago) if completed_ago is not None else None, run=run, input_url=None,
        output_url=None, error=None,
    )  # fmt: skip


def points(history: History, chart: str, series: str) -> list[float | None]:
    [found] = [c for c in history.view().charts if c.id == chart]
    return next(s.points for s in found.series if s.name == series)


def test_a_completion_counts_once_in_the_bin_of_its_completion_time() -> None:
    history = History(clock=lambda: NOW + 5)
    running = row("a", TaskState.STARTED, 30, None)
    done = replace(running, state=TaskState.SUCCESS, completed_at=at(25))
    history.task_changed(None, running)
    history.task_changed(running, done)
    history.task_changed(done, done)  # the same ending written again
    failed = row("b", TaskState.FAILURE, 100, 92)
    history.task_changed(None, failed)
    success = points(history, "completions", "SUCCESS")
    assert len(success) == BINS
    assert success[-1 - 3] == 1 / BIN_S  # 25 s before NOW+5: three bins before the newest
    assert sum(p or 0 for p in success) == pytest.approx(1 / BIN_S)
    assert points(history, "completions", "FAILURE")[-1 - 10] == 1 / BIN_S
    assert points(history, "latency", "p50")[-1 - 3] == pytest.approx(5.0)
    assert points(history, "latency", "p50")[-1] is None  # nothing ended in the newest bin


def test_a_retried_task_ends_again_and_counts_again() -> None:
    history = History(clock=lambda: NOW)
    first = row("a", TaskState.FAILURE, 50, 45)
    second = replace(first, state=TaskState.SUCCESS, run=2, completed_at=at(15))
    history.task_changed(None, first)
    history.task_changed(first, second)
    assert sum(p or 0 for p in points(history, "completions", "FAILURE")) * BIN_S == 1
    assert sum(p or 0 for p in points(history, "completions", "SUCCESS")) * BIN_S == 1


def test_endings_older_than_the_hour_are_left_out_and_old_bins_dropped() -> None:
    clock = [NOW]
    history = History(clock=lambda: clock[0])
    history.task_changed(None, row("old", TaskState.SUCCESS, 4000, 3700))
    history.task_changed(None, row("new", TaskState.SUCCESS, 100, 60))
    assert sum(p or 0 for p in points(history, "completions", "SUCCESS")) * BIN_S == 1
    clock[0] = NOW + 3600
    history.sampled({"fetch": 3}, {})
    assert sum(p or 0 for p in points(history, "completions", "SUCCESS")) == 0
    assert len(history._bins) == 1


def test_latency_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50.0, 95.0, 99.0)
    assert percentile([7.0], 99) == 7.0


def test_samples_fill_their_bin_and_leave_gaps_elsewhere() -> None:
    clock = [NOW + 1]
    history = History(clock=lambda: clock[0])
    history.sampled({"fetch": 4, "upscale": 2}, {"upscaler-1": 900})
    clock[0] = NOW + 21
    history.sampled({"fetch": 1}, {"upscaler-1": 1200})
    fetch = points(history, "queues", "fetch")
    assert fetch[-3:] == [4, None, 1] and fetch[0] is None
    assert points(history, "queues", "upload")[-1] == 0
    assert points(history, "gpu", "upscaler-1")[-3:] == [900, None, 1200]


def test_the_charts_draw_each_series_as_a_path_through_its_points() -> None:
    clock = [NOW + 1]
    history = History(clock=lambda: clock[0])
    history.sampled({"fetch": 4}, {})
    clock[0] = NOW + 11
    history.sampled({"fetch": 8}, {})
    history.task_changed(None, row("a", TaskState.SUCCESS, 3, 1))
    html = render_charts(history.view())
    assert html.count("<svg") == 3  # completions, latency, queues; no GPU reported
    assert "No upscaler reports GPU memory" in html
    [fetch] = re.findall(r"<path d='([^']*)' stroke='[^']*' data-series='fetch'/>", html)
    moves = re.findall(r"([ML])(\d+\.\d) (\d+\.\d)", fetch)
    assert [m[0] for m in moves] == ["M", "L"] and "h0" not in fetch  # one line over the two sampled bins
    assert float(moves[1][2]) < float(moves[0][2])  # 8 is drawn higher than 4
    assert ">10<" in html  # the queue chart's y axis tops out at 10 (for a maximum of 8)
    assert "data-series='SUCCESS'" in html and "data-series='p99'" in html


def test_nice_ceilings() -> None:
    assert [nice_ceiling(v) for v in (0, 0.07, 1, 3, 8, 10, 11, 420)] == [1, 0.1, 1, 5, 10, 10, 20, 500]


def test_a_point_alone_between_gaps_is_drawn_as_a_dot() -> None:
    history = History(clock=lambda: NOW + 1)
    history.task_changed(None, row("a", TaskState.SUCCESS, 3, 1))
    html = render_charts(history.view())
    [p99] = re.findall(r"<path d='([^']*)' stroke='[^']*' data-series='p99'/>", html)
    assert re.fullmatch(r"M\d+\.\d \d+\.\d h0", p99)

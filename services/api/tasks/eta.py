"""The estimated completion of a queued or running task (`eta` in GET /api/v1/tasks/{id}): the arithmetic.

Inputs, all measured (services/api/tasks/etareads.py reads them):

- per stage, from the live workers' heartbeat records (shared/runtime/servicetime.py): the mean time one task
  spends in a worker (`t`), the total concurrency (`c`: the slots of every live worker of the stage), so the
  stage completes `c / t` tasks a second with every slot busy, and the tasks its workers hold now;
- the upscaler's megapixels per second per model, for the task's own upscale once its input size is known;
- the queues: the messages before the task in its stage's queue (its priority, by stream sequence, and every
  higher priority), and the messages waiting in each later stage at its priority or higher.

The task passes the stages in order; each stage serves the tasks before it first. In stage j it starts when it
arrives (it finished stage j-1) and the stage has started the `n_j` tasks to be served before it (those in
its hands and queue now, plus those before the task in earlier stages, which pass stage j first):

    start_j  = max(finish_(j-1), max(n_j - c_j + 1, 0) * t_j / c_j)        finish_j = start_j + t_j

A task a worker holds finishes its stage `t - running` from now (at least 0). The estimate is None when a stage
still ahead has no live worker or nothing measured yet. How far off it is, measured: bench/README.md ("ETA").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.contracts.catalog import ROUTES
from shared.messages import PIPELINE, Classification, Stage, UpscaleOptions
from shared.runtime.servicetime import MP_PER_S_KEY, SERVICE_TIME_KEY, STAGE_KEY


@dataclass(frozen=True)
class StageRate:
    """One stage, all its live workers together."""

    service_s: float  # mean seconds one task spends in a worker
    concurrency: int  # slots of every live worker
    held: int = 0  # tasks in the workers' hands now
    mp_per_s: Mapping[str, float] = field(default_factory=dict)  # the upscaler: per model

    @property
    def per_s(self) -> float:
        """Tasks a second the stage completes with every slot busy."""
        return self.concurrency / self.service_s


@dataclass(frozen=True)
class Position:
    """Where the task is: the stage whose queue holds its message, and how far it has come there."""

    stage: Stage
    ahead: int = 0  # messages taken before it in that stage (waiting only)
    running_s: float | None = None  # seconds since a worker took it; None while it waits
    ready_in_s: float = 0.0  # a retried message's delay still to run
    waiting: Mapping[Stage, int] = field(default_factory=dict)  # later stages: messages queued before it gets there


def stage_rates(records: Iterable[Mapping[str, Any]]) -> dict[Stage, StageRate]:
    """Per stage, from the live workers' heartbeat records; a stage none of whose workers measured a task yet is
    left out. A worker that has measured nothing yet (just started) counts with its stage's mean time."""
    by_stage: dict[Stage, list[Mapping[str, Any]]] = {}
    for record in records:
        try:
            by_stage.setdefault(Stage(str(record.get(STAGE_KEY))), []).append(record)
        except ValueError:
            continue  # the API, the notifier: not a stage
    rates = {}
    for stage, workers in by_stage.items():
        times = [float(w[SERVICE_TIME_KEY]) for w in workers if w.get(SERVICE_TIME_KEY)]
        if not times:
            continue
        mean_s = sum(times) / len(times)
        # Each worker's own rate (its slots / its time); one without a measurement at the stage's mean.
        per_s = sum(int(w.get("concurrency") or 1) / float(w.get(SERVICE_TIME_KEY) or mean_s) for w in workers)
        concurrency = sum(int(w.get("concurrency") or 1) for w in workers)
        rates[stage] = StageRate(
            service_s=concurrency / per_s,
            concurrency=concurrency,
            held=sum(len(w.get("in_flight") or ()) for w in workers),
            mp_per_s=_mean_rates(w.get(MP_PER_S_KEY) or {} for w in workers),
        )
    return rates


def _mean_rates(per_worker: Iterable[Mapping[str, float]]) -> dict[str, float]:
    gathered: dict[str, list[float]] = {}
    for rates in per_worker:
        for model, rate in rates.items():
            if rate and rate > 0:
                gathered.setdefault(model, []).append(float(rate))
    return {model: sum(values) / len(values) for model, values in gathered.items()}


def upscale_s(rate: StageRate, classification: Classification | None, options: UpscaleOptions) -> float:
    """The task's own upscale: its input's megapixels at its model's measured rate (the model it asked for, else
    the one its category routes to; any measured model's mean when that one has not run yet: a stand-in or
    Lanczos runs then). The stage's mean time while the input size is not known (before classification)."""
    if classification is None or not rate.mp_per_s:
        return rate.service_s
    model = options.model or ROUTES.get(classification.category)
    mp_per_s = rate.mp_per_s.get(model or "") or sum(rate.mp_per_s.values()) / len(rate.mp_per_s)
    return classification.width * classification.height / 1e6 / mp_per_s


def remaining_s(
    position: Position, rates: Mapping[Stage, StageRate], own_upscale_s: float | None = None
) -> float | None:
    """Seconds until the task at `position` is done (the arithmetic in the module docstring); None when a stage
    still ahead has no measured rate."""
    stages = PIPELINE[PIPELINE.index(position.stage) :]
    if any(stage not in rates for stage in stages):
        return None
    own = {stage: rates[stage].service_s for stage in stages}
    if own_upscale_s is not None and Stage.UPSCALE in own:
        own[Stage.UPSCALE] = own_upscale_s
    first = rates[position.stage]
    if position.running_s is not None:
        finish = max(own[position.stage] - position.running_s, 0.0)
        before = max(first.held - 1, 0)  # the others in its stage's hands; the queue there is behind it
    else:
        before = position.ahead + first.held
        finish = max(position.ready_in_s, _slot_free_s(before, first)) + own[position.stage]
    for stage in stages[1:]:
        rate = rates[stage]
        before += position.waiting.get(stage, 0) + rate.held
        finish = max(finish, _slot_free_s(before, rate)) + own[stage]
    return finish


def _slot_free_s(before: int, rate: StageRate) -> float:
    """When a stage that must first start `before` other tasks has a slot for this one."""
    return max(before - rate.concurrency + 1, 0) / rate.per_s

"""What one task costs a stage worker, measured as it works: the inputs of the API's `eta` (services/api/tasks/eta.py).

Each stage process keeps an exponentially weighted mean of its handler's duration per successful task, and the
upscaler its throughput per model in input megapixels per second. Both go into the process's heartbeat record
(shared/runtime/presence.py) under the keys below, so that every API replica reads them from the workers bucket.
Durations are measured under the load the worker had: with several tasks in hand each takes longer, which is
what a task waiting behind them will see.
"""

from __future__ import annotations

from typing import Any

# The heartbeat record's keys (written by the stages, read by the API)
STAGE_KEY = "stage"  # the pipeline stage the process serves
SERVICE_TIME_KEY = "service_time_s"  # mean seconds one task spends in the handler; absent until one succeeded
MP_PER_S_KEY = "mp_per_s"  # the upscaler: {model name: input megapixels per second of one task}

# Weight of the newest observation: about the last ten tasks count, so the mean follows a change of load or
# model within seconds and one slow task (a model loading) fades out.
ALPHA = 0.2


class Ewma:
    """An exponentially weighted mean; the first observation is taken as it is."""

    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha = alpha
        self.mean: float | None = None
        self.count = 0

    def observe(self, value: float) -> None:
        self.count += 1
        self.mean = value if self.mean is None else self.mean + self.alpha * (value - self.mean)


class ServiceTime:
    """A stage worker's mean duration per task (successes only: a dropped message costs nothing like a task)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.duration = Ewma()

    def observe(self, seconds: float) -> None:
        self.duration.observe(seconds)

    def record(self) -> dict[str, Any]:
        mean = self.duration.mean
        return {STAGE_KEY: self.stage} | ({SERVICE_TIME_KEY: round(mean, 4)} if mean is not None else {})


class ModelRates:
    """The upscaler's throughput per model: input megapixels of one task / the time its upscaling took."""

    def __init__(self) -> None:
        self._rates: dict[str, Ewma] = {}

    def observe(self, model_used: str, input_pixels: int, seconds: float) -> None:
        if seconds > 0 and input_pixels > 0:
            self._rates.setdefault(model_key(model_used), Ewma()).observe(input_pixels / 1e6 / seconds)

    def record(self) -> dict[str, Any]:
        rates = {name: round(rate.mean, 4) for name, rate in self._rates.items() if rate.mean is not None}
        return {MP_PER_S_KEY: rates} if rates else {}


def model_key(model_used: str) -> str:
    """The model's name in an upscale result's `model_used` ("lanczos (fallback: ...)" -> "lanczos")."""
    return model_used.split(" ", 1)[0]

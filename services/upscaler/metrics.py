"""The upscaler's own metrics, collected when Prometheus scrapes (nothing on the inference path).

tm_upscaler_<field>_total{device}          every numeric field of the engine's `inference.Stats`, found by
                                           `dataclasses.fields` at scrape time, so a new counter is exported
                                           as soon as the engine has it
tm_upscaler_gpu_memory_bytes{device,kind}  kind = total|used (the whole device) and allocated|reserved (this
                                           process's torch caching allocator); CUDA only
tm_upscaler_model_load_seconds{model}      how long the last load of each model took (read, build, move)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from services.upscaler.inference import Stats
from services.upscaler.modelcache import ModelCache


class Engine(Protocol):
    """What the collector reads of `engine.Upscaler`."""

    device: str
    stats: Any  # a dataclass instance; inference.Stats
    models: ModelCache


def stats_counters(stats: Any, device: str) -> list[CounterMetricFamily]:
    """One counter per int/float field of the dataclass `stats` (booleans and anything else are skipped)."""
    families = []
    for item in dataclasses.fields(stats):
        value = getattr(stats, item.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        family = CounterMetricFamily(
            f"tm_upscaler_{item.name}", f"Upscaler engine counter Stats.{item.name}", labels=["device"]
        )
        family.add_metric([device], float(value))
        families.append(family)
    return families


class UpscalerCollector:
    """A prometheus_client collector over one `Upscaler` engine (register it on the worker's registry)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        """Every family this collector can produce, GPU ones included, whatever the device (for registration
        checks and tests: `collect` yields the GPU family only on CUDA)."""
        yield from stats_counters(Stats(), self.engine.device)
        yield _gpu_memory_family()
        yield _load_family()

    def collect(self) -> Iterable[Metric]:
        yield from stats_counters(self.engine.stats, self.engine.device)
        device = torch.device(self.engine.device)
        if device.type == "cuda":
            yield gpu_memory(device)
        loads = _load_family()
        for model, seconds in sorted(self.engine.models.load_seconds().items()):
            loads.add_metric([model], seconds)
        yield loads


def _gpu_memory_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "tm_upscaler_gpu_memory_bytes",
        "GPU memory: total and used on the device, allocated and reserved by this process",
        labels=["device", "kind"],
    )


def _load_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "tm_upscaler_model_load_seconds", "Seconds the last load of each model took", labels=["model"]
    )


def gpu_memory(device: torch.device) -> GaugeMetricFamily:
    """The device's memory now, as `tm_upscaler_gpu_memory_bytes`."""
    family = _gpu_memory_family()
    free, total = torch.cuda.mem_get_info(device)
    name = str(device)
    for kind, value in (
        ("total", total),
        ("used", total - free),
        ("allocated", torch.cuda.memory_allocated(device)),
        ("reserved", torch.cuda.memory_reserved(device)),
    ):
        family.add_metric([name, kind], float(value))
    return family

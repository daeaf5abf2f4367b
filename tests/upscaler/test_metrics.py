"""The upscaler's scrape-time metrics: engine counters (every Stats field), model load time, GPU memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from services.upscaler.engine import Upscaler
from services.upscaler.inference import Stats
from services.upscaler.metrics import UpscalerCollector
from services.upscaler.modelcache import ModelCache
from shared.messages import Category, UpscaleOptions
from tests.upscaler.conftest import small_compact

ANIME = "realesr-animevideov3"


def scrape(collector: UpscalerCollector) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(collector)
    page: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            page.setdefault(sample.name, []).append((sample.labels, sample.value))
    return page


def test_engine_counters_and_model_load_time_after_a_real_upscale(
    install: Callable[[str, nn.Module], Path],
) -> None:
    engine = Upscaler(install(ANIME, small_compact()), device="cpu")
    engine.upscale(Image.new("RGB", (24, 16), (90, 120, 200)), Category.ANIME, UpscaleOptions(model=ANIME))

    page = scrape(UpscalerCollector(engine))
    assert page["tm_upscaler_images_total"] == [({"device": "cpu"}, 1.0)]
    assert page["tm_upscaler_tiles_total"][0][1] >= 1
    loads = {labels["model"]: seconds for labels, seconds in page["tm_upscaler_model_load_seconds"]}
    assert set(loads) == {ANIME} and loads[ANIME] > 0  # the engine's own loads, whatever other engines did
    assert "tm_upscaler_gpu_memory_bytes" not in page  # CPU: nothing to report


@dataclass
class GrownStats(Stats):
    """Stats as the engine may grow them: a new counter, plus fields that are not counters."""

    warm_starts: int = 7
    busy_s: float = 1.5
    compiled: bool = True
    last_model: str = "x"
    per_model: dict[str, int] = field(default_factory=dict)


@dataclass
class FakeEngine:
    device: str = "cpu"
    stats: Stats = field(default_factory=GrownStats)
    models: ModelCache = field(default_factory=lambda: ModelCache(torch.device("cpu")))


def test_every_numeric_stats_field_is_exported_without_code_changes() -> None:
    page = scrape(UpscalerCollector(FakeEngine()))
    assert page["tm_upscaler_warm_starts_total"] == [({"device": "cpu"}, 7.0)]
    assert page["tm_upscaler_busy_s_total"] == [({"device": "cpu"}, 1.5)]
    for name in ("compiled", "last_model", "per_model"):
        assert f"tm_upscaler_{name}_total" not in page


def test_describe_names_the_gpu_family_even_on_cpu() -> None:
    names = {family.name for family in UpscalerCollector(FakeEngine()).describe()}
    assert {"tm_upscaler_gpu_memory_bytes", "tm_upscaler_model_load_seconds", "tm_upscaler_fp16_fallbacks"} <= names


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_memory_is_reported_on_cuda(install: Callable[[str, nn.Module], Path]) -> None:
    engine = Upscaler(install(ANIME, small_compact()), device="cuda")
    engine.upscale(Image.new("RGB", (24, 16), (90, 120, 200)), Category.ANIME, UpscaleOptions(model=ANIME))
    kinds = {labels["kind"]: v for labels, v in scrape(UpscalerCollector(engine))["tm_upscaler_gpu_memory_bytes"]}
    assert set(kinds) == {"total", "used", "allocated", "reserved"}
    assert kinds["total"] >= kinds["used"] > 0 and kinds["reserved"] >= kinds["allocated"] > 0

"""The engine's model cache: one load per model, its runnable form kept beside it, a bounded LRU."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from services.upscaler.modelcache import ModelCache
from shared.contracts import catalog
from tests.upscaler.conftest import small_compact

CPU = torch.device("cpu")
ANIME = "realesr-animevideov3"
GENERAL = "realesr-general-x4v3"


def test_a_model_is_loaded_once_per_dtype_and_denoise_strength(install: Callable[[str, nn.Module], Path]) -> None:
    install(ANIME, small_compact())
    install(GENERAL, small_compact(seed=1))
    model_dir = install("realesr-general-wdn-x4v3", small_compact(seed=2))
    cache = ModelCache(CPU)
    first = cache.get(ANIME, model_dir)
    assert cache.get(ANIME, model_dir) is first and first.runnable is first.loaded.net
    assert cache.get(ANIME, model_dir, torch.float64) is not first
    blended = cache.get(GENERAL, model_dir, denoise_strength=0.5)
    assert cache.get(GENERAL, model_dir, denoise_strength=0.5) is blended
    assert cache.get(GENERAL, model_dir, denoise_strength=0.25) is not blended
    assert cache.get(GENERAL, model_dir) is cache.get(GENERAL, model_dir, denoise_strength=1.0)  # 1: no blend
    assert cache.loaded_names() == [ANIME, GENERAL]


def test_a_rewritten_weight_file_is_loaded_again(install: Callable[[str, nn.Module], Path]) -> None:
    model_dir = install(ANIME, small_compact())
    cache = ModelCache(CPU)
    first = cache.get(ANIME, model_dir)
    path = model_dir / catalog.get(ANIME).filename
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # as a download that replaced the file
    assert cache.get(ANIME, model_dir) is not first


def test_the_least_recently_used_model_is_dropped_beyond_the_size(install: Callable[[str, nn.Module], Path]) -> None:
    model_dir = install(ANIME, small_compact())
    cache = ModelCache(CPU, size=2)
    single = cache.get(ANIME, model_dir, torch.float32)
    double = cache.get(ANIME, model_dir, torch.float64)
    assert cache.get(ANIME, model_dir, torch.float32) is single  # now the most recently used
    cache.get(ANIME, model_dir, torch.bfloat16)  # drops float64
    assert cache.get(ANIME, model_dir, torch.float32) is single
    assert cache.get(ANIME, model_dir, torch.float64) is not double
    assert set(cache.load_seconds()) == {ANIME} and cache.load_seconds()[ANIME] > 0
    cache.clear()
    assert cache.loaded_names() == [] and cache.get(ANIME, model_dir, torch.float32) is not single


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own
def test_the_runnable_net_is_channels_last_and_compiled_as_configured(
    install: Callable[[str, nn.Module], Path],
) -> None:
    model_dir = install(ANIME, small_compact())
    warm = ModelCache(CPU, channels_last=True, compile=True).get(ANIME, model_dir)
    conv = warm.loaded.net.state_dict()["body.0.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert warm.runnable is not warm.loaded.net and getattr(warm.runnable, "_orig_mod", None) is warm.loaded.net

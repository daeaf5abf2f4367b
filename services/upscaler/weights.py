"""Loading weights into networks, and keeping loaded models warm (where the files live and their download:
shared/modelfiles.py).

Checkpoints are parsed in one place (`read_state_dict`: `params_ema`, else `params`, else the bare dict)
and always with `weights_only=True`, so a weight file cannot run code.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from services.upscaler import arch
from shared.contracts import catalog
from shared.errors import ConfigurationError
from shared.modelfiles import require

_CACHE_SIZE = 4  # loaded nets kept per process; the largest official one is ~67 MB in fp32


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference, with what a caller needs to know to feed it."""

    name: str
    net: nn.Module
    arch: str
    scale: int
    in_channels: int
    device: torch.device
    dtype: torch.dtype


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a checkpoint on the CPU: `params_ema`, else `params`, else the file is the state dict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ConfigurationError(f"{path}: not a state-dict checkpoint")
    for key in ("params_ema", "params"):
        if key in checkpoint:
            return checkpoint[key]
    return checkpoint


def blend_state_dicts(a: dict[str, Tensor], b: dict[str, Tensor], weights: tuple[float, float]) -> dict[str, Tensor]:
    """Deep network interpolation (Real-ESRGAN's `dni`): weights[0] * a + weights[1] * b, key by key."""
    if a.keys() != b.keys():
        raise ConfigurationError("cannot blend state dicts with different keys")
    return {key: weights[0] * a[key] + weights[1] * b[key] for key in a}


_cache: OrderedDict[tuple[str, ...], LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()
# Seconds the last load of each model took (read, build, move to the device): its /metrics gauge.
load_seconds: dict[str, float] = {}


def load_model(
    name: str,
    model_dir: Path,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    denoise_strength: float | None = None,
) -> LoadedModel:
    """Load official model `name` from `model_dir` onto `device`, reusing a net this process loaded before.

    `denoise_strength` s (realesr-general-x4v3 only) blends it with the wdn weights as [s, 1 - s].
    Raises ConfigurationError when a weight file is missing or does not fit either architecture.
    """
    path = require(name, model_dir)
    blend = name == catalog.DENOISE_MODEL and denoise_strength is not None and denoise_strength != 1
    helper = require(catalog.DENOISE_HELPER, model_dir) if blend else None
    # Path and mtime are part of the key so two model dirs, or a re-downloaded file, never share a net.
    files = (path, helper) if helper is not None else (path,)
    stamp = ",".join(f"{p.resolve()}@{p.stat().st_mtime_ns}" for p in files)
    key = (name, stamp, str(device), str(dtype), f"{denoise_strength}" if blend else "")
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        began = time.perf_counter()
        state = read_state_dict(path)
        if helper is not None and denoise_strength is not None:
            state = blend_state_dicts(state, read_state_dict(helper), (denoise_strength, 1 - denoise_strength))
        try:
            arch_name, kwargs = arch.detect(state)
            net = arch.from_state_dict(state)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ConfigurationError(f"{path}: not a Real-ESRGAN checkpoint this service can load: {exc}") from exc
        net = net.to(device=device, dtype=dtype).requires_grad_(False)
        model = LoadedModel(
            name=name,
            net=net,
            arch=arch_name,
            scale=int(kwargs.get("scale", kwargs.get("upscale", 4))),
            in_channels=int(kwargs["num_in_ch"]),
            device=device,
            dtype=dtype,
        )
        _cache[key] = model
        load_seconds[name] = time.perf_counter() - began
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return model


def loaded_names() -> list[str]:
    """Names of the models this process holds loaded, most recently used last."""
    with _cache_lock:
        return list(dict.fromkeys(model.name for model in _cache.values()))


def clear_cache() -> None:
    """Forget every loaded net (tests; freeing device memory)."""
    with _cache_lock:
        _cache.clear()

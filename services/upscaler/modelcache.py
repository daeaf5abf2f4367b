"""The models one engine keeps warm: each loaded from its weight files, and made ready to run, once.

A model is kept with its runnable form (channels_last and torch.compile, as the engine is configured), and
the two are dropped together: beyond `size` models the least recently used goes, and no second cache keeps
its net alive. The engine owns the cache; nothing about models is kept at module level.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from services.upscaler.weights import LoadedModel, load_model, weight_files

CACHE_SIZE = 4  # models kept per engine; the largest official one is ~67 MB in fp32 (an fp32 twin is one more)


@dataclass(frozen=True)
class WarmModel:
    """A loaded model and the form of its net the device runs."""

    loaded: LoadedModel  # its `net` is never compiled: memory.choose probes it
    runnable: nn.Module


class ModelCache:
    """Loaded and prepared models for one device, the least recently used dropped beyond `size`."""

    def __init__(
        self, device: torch.device, *, channels_last: bool = False, compile: bool = False, size: int = CACHE_SIZE
    ) -> None:
        self.device = device
        self.channels_last = channels_last
        self.compile = compile
        self.size = size
        self._models: OrderedDict[tuple[str, ...], WarmModel] = OrderedDict()
        self._load_seconds: dict[str, float] = {}  # the last load of each name, kept after it is dropped
        self._lock = threading.Lock()  # the engine's callers and its batcher thread (fp32 twins) both load

    def get(
        self, name: str, model_dir: Path, dtype: torch.dtype = torch.float32, denoise_strength: float | None = None
    ) -> WarmModel:
        """Official model `name` from `model_dir`, loaded on first use (see `weights.load_model`)."""
        files = weight_files(name, model_dir, denoise_strength)
        # Path and mtime are part of the key so two model dirs, or a re-downloaded file, never share a net.
        stamp = ",".join(f"{p.resolve()}@{p.stat().st_mtime_ns}" for p in files)
        key = (name, stamp, str(dtype), f"{denoise_strength}" if len(files) > 1 else "")
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            began = time.perf_counter()
            loaded = load_model(name, model_dir, self.device, dtype, denoise_strength)
            self._load_seconds[name] = time.perf_counter() - began
            warm = WarmModel(loaded, self._runnable(loaded.net))
            self._models[key] = warm
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return warm

    def loaded_names(self) -> list[str]:
        """Names of the models held, most recently used last."""
        with self._lock:
            return list(dict.fromkeys(warm.loaded.name for warm in self._models.values()))

    def load_seconds(self) -> dict[str, float]:
        """Seconds the last load of each model took (read, build, move to the device): a /metrics gauge."""
        with self._lock:
            return dict(self._load_seconds)

    def clear(self) -> None:
        """Forget every model (their device memory is freed once no image still runs them)."""
        with self._lock:
            self._models.clear()

    def _runnable(self, net: nn.Module) -> nn.Module:
        if self.channels_last:
            # A module converts in place, so `loaded.net` (what memory.choose measures) is channels_last too.
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return torch.compile(net) if self.compile else net  # type: ignore[return-value]

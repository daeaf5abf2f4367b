"""Weight files: where they live, how to read them, keeping loaded models warm, and downloading them.

Checkpoints are parsed in one place (`read_state_dict`: `params_ema`, else `params`, else the bare dict)
and always with `weights_only=True`, so a weight file cannot run code.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from torch import Tensor, nn

from services.upscaler import arch, catalog
from shared import config
from shared.errors import ConfigurationError

MODEL_DIR_ENV = "TM_MODEL_DIR"
_CACHE_SIZE = 4  # loaded nets kept per process; the largest official one is ~67 MB in fp32
_CHUNK_BYTES = 1 << 20


class DownloadError(Exception):
    """A weight file could not be fetched or did not match its published size and sha256."""


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


def default_model_dir() -> Path:
    """`$TM_MODEL_DIR`, else `~/.cache/task-manager/models`."""
    configured = os.environ.get(MODEL_DIR_ENV)
    return Path(configured).expanduser() if configured else config.default_model_dir()


def weight_path(name: str, model_dir: Path) -> Path:
    """Where the weights of official model `name` are expected in `model_dir` (they may be absent)."""
    return Path(model_dir) / catalog.get(name).filename


def is_installed(name: str, model_dir: Path) -> bool:
    """Whether the weight file of `name` is present (its hash is checked at download, not here)."""
    return weight_path(name, model_dir).is_file()


def require(name: str, model_dir: Path) -> Path:
    """The path of `name`'s weights; ConfigurationError telling how to install them when missing."""
    path = weight_path(name, model_dir)
    if not path.is_file():
        raise ConfigurationError(
            f"weights for model {name!r} are not installed: {path.name} not found in {path.parent}; "
            f"install them with `task-manager models download {name}`"
        )
    return path


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


def download_url(name: str, mirror: str | None = None) -> str:
    """The official URL of `name`, with the GitHub releases prefix replaced by `mirror` when given."""
    url = catalog.get(name).url
    if mirror:
        url = mirror.rstrip("/") + "/" + url.removeprefix(catalog.OFFICIAL_URL_PREFIX)
    return url


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    name: str,
    model_dir: Path,
    mirror: str | None = None,
    *,
    timeout_s: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Fetch official model `name` into `model_dir` and return its path.

    Streams to a temporary file beside the target, checks the published size and sha256, then renames it
    into place, so the target is either absent or complete. A present file with the right hash is kept.
    `progress(done_bytes, total_bytes)` is called after each chunk. Raises DownloadError.
    """
    spec = catalog.get(name)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / spec.filename
    if target.is_file() and target.stat().st_size == spec.size_bytes and _sha256(target) == spec.sha256:
        return target
    url = download_url(name, mirror)
    fd, tmp_name = tempfile.mkstemp(dir=model_dir, prefix=f".{spec.filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with (
            os.fdopen(fd, "wb") as out,
            httpx.stream("GET", url, follow_redirects=True, timeout=timeout_s) as resp,
        ):
            if resp.status_code != 200:
                raise DownloadError(f"{name}: GET {url} answered HTTP {resp.status_code}")
            for chunk in resp.iter_bytes(_CHUNK_BYTES):
                size += len(chunk)
                if size > spec.size_bytes:
                    raise DownloadError(f"{name}: {url} is larger than the expected {spec.size_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(size, spec.size_bytes)
            out.flush()
            os.fsync(out.fileno())
        if size != spec.size_bytes:
            raise DownloadError(f"{name}: got {size} bytes from {url}, expected {spec.size_bytes}")
        if digest.hexdigest() != spec.sha256:
            raise DownloadError(f"{name}: sha256 mismatch for {url}: got {digest.hexdigest()}, expected {spec.sha256}")
        os.replace(tmp, target)
    except httpx.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{name}: downloading {url} failed: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target

"""Loading weights into networks (where the files live and their download: shared/modelfiles.py; keeping
loaded models warm: modelcache.py).

Checkpoints are parsed in one place (`read_state_dict`: `params_ema`, else `params`, else the bare dict)
and always with `weights_only=True`, so a weight file cannot run code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from services.upscaler import arch
from shared.contracts import catalog
from shared.modelfiles import require
from shared.runtime.errors import ConfigurationError


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


def weight_files(name: str, model_dir: Path, denoise_strength: float | None = None) -> tuple[Path, ...]:
    """The files official model `name` is built from: its own, then the wdn weights when `denoise_strength` blends.

    Raises ConfigurationError, naming the install command, when one is missing.
    """
    path = require(name, model_dir)
    if name == catalog.DENOISE_MODEL and denoise_strength is not None and denoise_strength != 1:
        return path, require(catalog.DENOISE_HELPER, model_dir)
    return (path,)


def load_model(
    name: str,
    model_dir: Path,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    denoise_strength: float | None = None,
) -> LoadedModel:
    """Load official model `name` from `model_dir` onto `device` (every call reads the files again: an engine
    keeps its models in a `modelcache.ModelCache`).

    `denoise_strength` s (realesr-general-x4v3 only) blends it with the wdn weights as [s, 1 - s].
    Raises ConfigurationError when a weight file is missing or does not fit either architecture.
    """
    files = weight_files(name, model_dir, denoise_strength)
    state = read_state_dict(files[0])
    if len(files) > 1 and denoise_strength is not None:
        state = blend_state_dicts(state, read_state_dict(files[1]), (denoise_strength, 1 - denoise_strength))
    try:
        arch_name, kwargs = arch.detect(state)
        net = arch.from_state_dict(state)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ConfigurationError(f"{files[0]}: not a Real-ESRGAN checkpoint this service can load: {exc}") from exc
    return LoadedModel(
        name=name,
        net=net.to(device=device, dtype=dtype).requires_grad_(False),
        arch=arch_name,
        scale=int(kwargs.get("scale", kwargs.get("upscale", 4))),
        in_channels=int(kwargs["num_in_ch"]),
        device=device,
        dtype=dtype,
    )

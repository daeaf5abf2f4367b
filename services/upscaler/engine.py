"""The facade the upscaler worker calls: pick a model, run it over any Pillow image, or fall back to Lanczos.

Routing: `options.model` when given (its weights must be installed), else `catalog.ROUTES[category]`; a routed
model whose weights are missing degrades to a Lanczos resize, labelled as such in `model_used`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps

from services.upscaler import catalog, tiling, weights
from services.upscaler.options import validate_options
from shared.errors import ConfigurationError, InputError
from shared.messages import Category, UpscaleOptions

FALLBACK_SCALE = 4.0


@dataclass(frozen=True)
class UpscaleResult:
    """What `Upscaler.upscale` made, and with which model on which device."""

    image: Image.Image
    model_used: str  # e.g. "realesr-animevideov3", or "lanczos (fallback: RealESRGAN_x4plus weights not installed)"
    fallback: bool
    device: str  # "cpu" | "cuda:0"


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(f"device {device!r} requested but CUDA is not available")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _normalize(image: Image.Image) -> Image.Image:
    """The image upright (EXIF orientation) in one of the modes the engine keeps: RGB, RGBA, L, LA."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        return image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return image


class Upscaler:
    """Turns images into larger images; one per worker process, models stay loaded between calls."""

    def __init__(self, model_dir: Path, device: str = "auto", default_tile: int = 256, half: bool = True) -> None:
        self.model_dir = Path(model_dir)
        self.default_tile = default_tile
        self._device = _resolve_device(device)
        self.device = str(self._device)
        # fp16 halves memory and roughly doubles throughput on GPUs; CPUs have no fast fp16 convs.
        self._dtype = torch.float16 if half and self._device.type == "cuda" else torch.float32

    def worker_type(self) -> str:
        """The worker pool this process serves: "gpu" when inference runs on CUDA, else "cpu"."""
        return "gpu" if self._device.type == "cuda" else "cpu"

    def describe(self) -> dict[str, object]:
        """This upscaler's configuration, for the dashboard's GPU section."""
        info: dict[str, object] = {
            "device": self.device,
            "device_name": "CPU",
            "precision": "fp16" if self._dtype == torch.float16 else "fp32",
            "tile": self.default_tile,
            "models_loaded": ", ".join(weights.loaded_names()) or "none",
            "models_installed": ", ".join(n for n in catalog.MODELS if weights.is_installed(n, self.model_dir)),
        }
        if self._device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self._device)
            info |= {
                "device_name": torch.cuda.get_device_name(self._device),
                "memory_total_mb": total // 2**20,
                "memory_used_mb": (total - free) // 2**20,
            }
        return info

    def upscale(
        self,
        image: Image.Image,
        category: Category,
        options: UpscaleOptions,
        progress: Callable[[float], None] | None = None,
    ) -> UpscaleResult:
        """Upscale `image` with the model for `category` (or `options.model`), keeping its mode.

        Raises InputError for bad options or an undecodable image, ConfigurationError when an explicitly
        requested model is not installed. Exceptions raised by `progress` propagate (that is how to abort).
        """
        try:
            validate_options(options)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        try:
            image = _normalize(image)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot decode image: {exc}") from exc

        name = options.model or catalog.ROUTES[category]
        denoise = options.denoise_strength if name == catalog.DENOISE_MODEL else None
        needed = [name] + ([catalog.DENOISE_HELPER] if denoise is not None and denoise != 1 else [])
        missing = [n for n in needed if not weights.is_installed(n, self.model_dir)]
        if missing and options.model is not None:
            weights.require(missing[0], self.model_dir)  # raises ConfigurationError with the install command
        if missing:
            outscale = options.outscale if options.outscale is not None else FALLBACK_SCALE
            size = tiling.scaled_size(image.size, outscale)
            resized = image.resize(size, Image.Resampling.LANCZOS)
            if progress is not None:
                progress(1.0)
            label = f"lanczos (fallback: {missing[0]} weights not installed)"
            return UpscaleResult(resized, label, fallback=True, device=self.device)

        model = weights.load_model(name, self.model_dir, self._device, self._dtype, denoise)
        out = tiling.enhance(
            model.net,
            image.convert("RGB"),
            model.scale,
            outscale=options.outscale,
            device=self._device,
            dtype=self._dtype,
            tile=self.default_tile if options.tile is None else options.tile,
            tile_pad=options.tile_pad,
            pre_pad=options.pre_pad,
            progress=progress,
        )
        if image.mode in ("L", "LA"):
            out = out.convert("L")  # same luma weights as RealESRGANer's BGR2GRAY
        if image.mode in ("RGBA", "LA"):
            out.putalpha(image.getchannel("A").resize(out.size, Image.Resampling.LANCZOS))
        label = name if denoise is None else f"{name} (denoise_strength {denoise:g})"
        return UpscaleResult(out, label, fallback=False, device=self.device)

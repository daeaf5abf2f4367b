"""The facade the upscaler worker calls: pick a model, run it over a picture, or fall back to Lanczos.

Routing: `options.model` when given (its weights must be installed), else `catalog.ROUTES[category]`. Weights being
downloaded (`task-manager up` fetches the default models in the background) are waited for, up to `model_wait_s`;
a routed model whose weights are still missing runs on the closest installed network, else degrades to a Lanczos
resize (`choice.py`); `model_used` says which and why.
Pictures (`services.upscaler.picture`) keep 16-bit data and alpha; `upscale` also takes a Pillow image.
The network runs through `batcher.TileBatcher` (tiles, batches shared by the images of concurrent callers,
fp16 with fp32 fallback, OOM splitting), which owns the device from one thread;
`outscale` then resizes with Lanczos, as RealESRGANer does (Pillow's Lanczos-3, where it uses OpenCV's
Lanczos-4), to int(size * outscale) pixels; a target size (`target_width` / `target_height`, `fit`) is
resized, cropped or padded to instead (`fit.py`).

Layers, each importing only those below it: worker -> engine -> batcher (tile scheduler) -> plan (one image)
-> inference (the device). The engine's `models` (modelcache.ModelCache) is the one place models are kept.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from services.upscaler import memory
from services.upscaler.alpha import RESIZE
from services.upscaler.batcher import TileBatcher
from services.upscaler.choice import choose
from services.upscaler.fit import Size, finish, output_size
from services.upscaler.inference import Network, Stats, TileRunner, TileSettings
from services.upscaler.modelcache import ModelCache
from services.upscaler.picture import Picture, from_pil
from shared import modelfiles
from shared.contracts import catalog
from shared.contracts.options import (
    DEFAULT_ALPHA_MODE,
    check_output_size,
    has_target,
    tile_overlap,
    validate_options,
)
from shared.messages import Category, UpscaleOptions
from shared.runtime.errors import ConfigurationError, InputError


@dataclass(frozen=True)
class UpscaleResult:
    """What `Upscaler.upscale` made, and with which model on which device."""

    picture: Picture
    # e.g. "RealESRGAN_x4plus", "realesr-animevideov3 (RealESRGAN_x4plus not installed)",
    # "lanczos (fallback: RealESRGAN_x4plus weights not installed)"
    model_used: str
    fallback: bool  # the routed model did not run: a stand-in network or Lanczos did
    device: str  # "cpu" | "cuda:0"

    @property
    def width(self) -> int:
        return self.picture.width

    @property
    def height(self) -> int:
        return self.picture.height

    @functools.cached_property
    def image(self) -> Image.Image:
        """The picture as a Pillow image (8 bits a channel, but 16-bit grey stays "I;16")."""
        return self.picture.to_pil()


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


class Upscaler:
    """Turns pictures into larger pictures; one per worker process, models stay loaded between calls (`models`).

    `default_tile`: tile size when a task names none (None: chosen from free memory and the model).
    `batch`: tiles per forward (None: from free memory). `feather`: overlap blended at tile edges (None: what
    options.tile_overlap gives for the task's tile_pad and model). `half`: fp16 on CUDA. `channels_last` (None:
    on CUDA). `compile`: torch.compile the nets.
    `max_output_pixels`: larger outputs are refused before inference (None: no limit).
    `model_wait_s`: how long a task waits for its model's weights while they are being downloaded (0: not at all).
    `runner_class`: what drives the device; a bench or test passes a stand-in subclass (bench/upscale_cpu.py).
    """

    def __init__(
        self,
        model_dir: Path,
        device: str = "auto",
        default_tile: int | None = 256,
        half: bool = True,
        *,
        batch: int | None = None,
        feather: int | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
        max_output_pixels: int | None = None,
        model_wait_s: float = 0.0,
        runner_class: type[TileRunner] = TileRunner,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.max_output_pixels = max_output_pixels
        self.model_wait_s = model_wait_s
        self.default_tile = default_tile
        self.batch = batch
        self.feather = feather
        self._device = _resolve_device(device)
        self.device = str(self._device)
        cuda = self._device.type == "cuda"
        # fp16 halves memory and roughly doubles throughput on GPUs; CPUs have no fast fp16 convs.
        self._dtype = torch.float16 if half and cuda else torch.float32
        self.channels_last = cuda if channels_last is None else channels_last
        self.stats = Stats()
        self._runner = runner_class(self._device, self.stats, channels_last=self.channels_last)
        self._batcher = TileBatcher(self._runner)
        self.models = ModelCache(self._device, channels_last=self.channels_last, compile=compile)
        self._preparing = threading.RLock()  # model loads and sizing probes, one caller at a time
        if cuda:
            torch.backends.cudnn.benchmark = True  # tiles of one image share a shape; autotune it once

    def worker_type(self) -> str:
        """The worker pool this process serves: "gpu" when inference runs on CUDA, else "cpu"."""
        return "gpu" if self._device.type == "cuda" else "cpu"

    def describe(self) -> dict[str, object]:
        """This upscaler's configuration and counters, for the dashboard's GPU section."""
        info: dict[str, object] = {
            "device": self.device,
            "device_name": "CPU",
            "precision": "fp16" if self._dtype == torch.float16 else "fp32",
            "tile": "auto" if self.default_tile is None else self.default_tile,
            "models_loaded": ", ".join(self.models.loaded_names()) or "none",
            "models_installed": ", ".join(n for n in catalog.MODELS if modelfiles.is_installed(n, self.model_dir)),
            "downloading": ", ".join(
                f"{name} {done * 100 // total}% ({done / 1e6:.0f} of {total / 1e6:.0f} MB)"
                for name, (done, total) in modelfiles.downloads_under_way(self.model_dir).items()
            ),
            "tiles": self.stats.tiles,
            "fp16_fallbacks": self.stats.fp16_fallbacks,
            "oom_splits": self.stats.oom_splits,
            "shared_batches": self.stats.shared_batches,
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
        """Upscale a Pillow image (see `upscale_picture`); 16-bit colour needs `codec.decode` and a Picture."""
        try:
            picture = from_pil(image)
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"cannot decode image: {exc}") from exc
        return self.upscale_picture(picture, category, options, progress)

    def upscale_picture(
        self,
        picture: Picture,
        category: Category,
        options: UpscaleOptions,
        progress: Callable[[float], None] | None = None,
        *,
        priority: int = 0,
        cancel: threading.Event | None = None,
    ) -> UpscaleResult:
        """Upscale `picture` with the model for `category` (or `options.model`), keeping mode and bit depth.

        Safe to call from several threads at once: their tiles share batches, highest `priority` first.
        Raises InputError for bad options, ConfigurationError when an explicitly requested model is not
        installed (once a download of it under way has had `model_wait_s`). Exceptions raised by `progress`
        propagate (that is how to abort), as does `plan.Cancelled` once `cancel` is set.
        """
        try:
            validate_options(options)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

        name = options.model or catalog.ROUTES[category]
        denoise = options.denoise_strength if name == catalog.DENOISE_MODEL else None
        needed = [name] + ([catalog.DENOISE_HELPER] if denoise is not None and denoise != 1 else [])
        # The final size: the target's, else the model's own scale unless outscale says otherwise; a stand-in
        # or Lanczos gives it too.
        outscale = float(catalog.get(name).scale) if options.outscale is None else options.outscale
        final = output_size(picture.size, options, outscale)
        self._check_output_size(picture.size, None, final)
        chosen = choose(name, needed, options.model is not None, self.model_dir, self.model_wait_s, cancel)
        why = None
        if chosen.network is None:
            label = f"lanczos (fallback: {name} weights {chosen.absent})"
            return self._lanczos(picture, options, outscale, label, progress)
        if chosen.network != name:
            if not has_target(options):
                options = options.model_copy(update={"outscale": outscale})  # a x2 stand-in is resized to the x4
            why, name = f"{name} {chosen.absent}", chosen.network
        self._check_output_size(picture.size, catalog.get(name).scale, final)

        with self._preparing:
            network, job = self._prepare(picture, name, denoise, options)
        pixels = self._batcher.run(picture.pixels, network, job, progress, priority=priority, cancel=cancel)
        out = finish(picture.with_pixels(pixels), picture.size, options, options.outscale)
        label = name if denoise is None else f"{name} (denoise_strength {denoise:g})"
        if why is not None:
            label = f"{name} ({why})"
        return UpscaleResult(out, label, fallback=why is not None, device=self.device)

    def _lanczos(
        self,
        picture: Picture,
        options: UpscaleOptions,
        outscale: float,
        label: str,
        progress: Callable[[float], None] | None,
    ) -> UpscaleResult:
        """The last resort: a Lanczos resize by `outscale`, or to the target size, straight from the input."""
        resized = finish(picture, picture.size, options, outscale)
        if progress is not None:
            progress(1.0)
        return UpscaleResult(resized, label, fallback=True, device=self.device)

    def _prepare(
        self, picture: Picture, name: str, denoise: float | None, options: UpscaleOptions
    ) -> tuple[Network, TileSettings]:
        """The loaded network and how to cut `picture` for it."""
        warm = self.models.get(name, self.model_dir, self._dtype, denoise)
        model = warm.loaded
        fp32: Callable[[], nn.Module] | None = None
        if self._dtype != torch.float32:

            def fp32() -> nn.Module:
                with self._preparing:  # called from the batcher's thread
                    return self.models.get(name, self.model_dir, torch.float32, denoise).runnable

        network = Network(warm.runnable, model.scale, self._dtype, fp32)
        tile = self.default_tile if options.tile is None else options.tile
        tile_pad, feather = tile_overlap(options, name, self.feather)
        alpha_mode = options.alpha_mode or DEFAULT_ALPHA_MODE
        sizing = memory.choose(
            model.net,
            self._device,
            self._dtype,
            (picture.height + options.pre_pad, picture.width + options.pre_pad),
            tile=tile,
            tile_pad=tile_pad,
            batch=self.batch,
            mod={2: 2, 1: 4}.get(model.scale, 1),
            passes=2 if picture.has_alpha and alpha_mode != RESIZE else 1,
        )
        job = TileSettings(
            tile=sizing.tile,
            tile_pad=tile_pad,
            pre_pad=options.pre_pad,
            feather=feather,
            batch=sizing.batch,
            alpha_mode=alpha_mode,
        )
        return network, job

    def _check_output_size(self, size: Size, net_scale: int | None, final: Size) -> None:
        """InputError, before any inference, when the `final` output (or the network's, before it is resized to
        that) is too large."""
        if self.max_output_pixels is None:
            return
        try:
            if net_scale is not None:  # the network's own output is held in full before the final resize
                network = (size[0] * net_scale, size[1] * net_scale)
                check_output_size(network, self.max_output_pixels, what=f"the x{net_scale} network output")
            check_output_size(final, self.max_output_pixels)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

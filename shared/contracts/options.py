"""Validation of a task's upscale options, without torch, so the API can refuse bad kwargs at submission."""

from __future__ import annotations

from shared.contracts import catalog
from shared.images import OUTPUT_FORMATS
from shared.messages import UpscaleOptions

MAX_OUTSCALE = 8.0
TILE_RANGE = range(32, 2049)
PAD_RANGE = range(0, 65)
PRACTICAL_TILE_PAD = 10  # RealESRGANer's default: the pad of nets whose receptive field is out of reach
ALPHA_MODES = ("premultiplied", "network", "resize")  # see services/upscaler/alpha.py
DEFAULT_ALPHA_MODE = ALPHA_MODES[0]
FITS = ("contain", "cover", "stretch")  # how a target_width x target_height box is filled: services/upscaler/fit.py
DEFAULT_FIT = FITS[0]  # neither distorts nor loses any of the picture
MAX_TARGET_SIDE = 65535  # the largest side a JPEG can hold (TM_MAX_OUTPUT_PIXELS usually binds first)
TARGETS = ("target_width", "target_height")


def validate_options(options: UpscaleOptions, max_output_pixels: int | None = None) -> None:
    """Raise ValueError naming the first bad field ("kwargs.<field>: ...") of a task's upscale options.

    With `max_output_pixels` (TM_MAX_OUTPUT_PIXELS), a target box too large for it is refused too: the one
    output size known before the input is fetched. The engine checks every output size again."""
    if options.model is not None and options.model not in catalog.selectable_names():
        known = ", ".join(catalog.selectable_names())
        raise ValueError(f"kwargs.model: unknown model {options.model!r}; known: {known}")
    if options.outscale is not None and not 0 < options.outscale <= MAX_OUTSCALE:
        raise ValueError(f"kwargs.outscale: must be > 0 and <= {MAX_OUTSCALE:g}, got {options.outscale}")
    if options.tile is not None and options.tile != 0 and options.tile not in TILE_RANGE:
        raise ValueError(
            f"kwargs.tile: must be 0 (no tiling) or {TILE_RANGE.start}..{TILE_RANGE.stop - 1}, got {options.tile}"
        )
    for field in ("tile_pad", "pre_pad"):
        value = getattr(options, field)
        if value is not None and value not in PAD_RANGE:
            raise ValueError(f"kwargs.{field}: must be {PAD_RANGE.start}..{PAD_RANGE.stop - 1}, got {value}")
    if options.denoise_strength is not None:
        if not 0 <= options.denoise_strength <= 1:
            raise ValueError(f"kwargs.denoise_strength: must be in [0, 1], got {options.denoise_strength}")
        if options.model != catalog.DENOISE_MODEL:
            raise ValueError(
                f"kwargs.denoise_strength: only applies to model {catalog.DENOISE_MODEL!r}; set kwargs.model to it"
            )
    if options.output_format is not None and options.output_format not in OUTPUT_FORMATS:
        raise ValueError(
            f"kwargs.output_format: must be one of {', '.join(OUTPUT_FORMATS)}, got {options.output_format!r}"
        )
    if options.alpha_mode not in ALPHA_MODES:
        raise ValueError(f"kwargs.alpha_mode: must be one of {', '.join(ALPHA_MODES)}, got {options.alpha_mode!r}")
    _validate_target(options, max_output_pixels)


def has_target(options: UpscaleOptions) -> bool:
    """Whether the task asks for an output size (target_width and/or target_height) rather than a scale."""
    return options.target_width is not None or options.target_height is not None


def _validate_target(options: UpscaleOptions, max_output_pixels: int | None) -> None:
    for field in TARGETS:
        value = getattr(options, field)
        if value is not None and not 1 <= value <= MAX_TARGET_SIDE:
            raise ValueError(f"kwargs.{field}: must be 1..{MAX_TARGET_SIDE}, got {value}")
    if options.fit is not None and options.fit not in FITS:
        raise ValueError(f"kwargs.fit: must be one of {', '.join(FITS)}, got {options.fit!r}")
    if not has_target(options):
        if options.fit is not None:
            raise ValueError("kwargs.fit: applies only to a target size; set kwargs.target_width and target_height")
        return
    # Two sizes for one output: refused, rather than one of them silently ignored.
    if options.outscale is not None:
        raise ValueError("kwargs.outscale: cannot be combined with kwargs.target_width/target_height; use one")
    if options.target_width is not None and options.target_height is not None and max_output_pixels is not None:
        box = (options.target_width, options.target_height)
        try:
            check_output_size(box, max_output_pixels)
        except ValueError as exc:
            raise ValueError(f"kwargs.target_width/target_height: {exc}") from exc


def tile_overlap(options: UpscaleOptions, model: str, feather: int | None = None) -> tuple[int, int]:
    """(tile_pad, feather) to cut an image for `model`; `feather` None: the default that goes with the pad.

    A task's own kwargs.tile_pad is used as given, with feather tile_pad // 2, as it always was. Unset, the
    pad covers the model's receptive field (catalog) beyond the feather where a client could have asked
    for that much (PAD_RANGE): every kept pixel then sees all it depends on, tiles agree with an untiled
    run up to float rounding, and need no cross-fade (feather 0). That is the compact models (18 and 34
    pixels). RRDBNet's field (94 to 698 pixels) would cost several times the untiled compute, so those
    get PRACTICAL_TILE_PAD and its feather, and differ from an untiled run where the field is cut off.
    """
    if options.tile_pad is not None:
        return options.tile_pad, options.tile_pad // 2 if feather is None else feather
    radius = catalog.get(model).receptive_radius
    if radius < PAD_RANGE.stop:
        feather = 0 if feather is None else feather
        return radius + feather, feather
    return PRACTICAL_TILE_PAD, PRACTICAL_TILE_PAD // 2 if feather is None else feather


def check_output_size(size: tuple[int, int], max_pixels: int, *, what: str = "output") -> None:
    """Raise ValueError when an image of `size` (width, height) would be over `max_pixels` (TM_MAX_OUTPUT_PIXELS)."""
    width, height = size
    if width * height > max_pixels:
        raise ValueError(
            f"{what} would be {width}x{height} ({width * height / 1e6:.4g} MP), "
            f"over the {max_pixels / 1e6:.4g} MP limit (TM_MAX_OUTPUT_PIXELS)"
        )

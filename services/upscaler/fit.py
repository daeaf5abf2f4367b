"""The output's size: a scale (`outscale`) or a target box (`target_width` / `target_height`, `fit`).

The network always runs at its native factor; this is the Lanczos step after it (and the whole of the
Lanczos fallback). For an input of w x h and a target W / H:

- W alone (or H alone): the other side follows the aspect ratio, rounded to the nearest pixel (at least 1);
  `fit` plays no part.
- W and H, fit "stretch": resized to W x H; the aspect ratio is not kept.
- W and H, fit "cover": scaled to fill W x H, the overflow cropped equally from both sides (the centre is
  kept). The crop is taken in the source (Pillow's resize `box`), so nothing larger than W x H is made.
- W and H, fit "contain" (the default): scaled to fit inside W x H and centred on a transparent W x H
  canvas. A picture without alpha gains an alpha channel where padding is added; a JPEG, which holds no
  alpha, gets white padding (shared/images.py flattens alpha onto white).

With both sides given every mode gives exactly W x H; where the aspect ratios agree all three are one resize.
Sizes are whole-pixel arithmetic on the input's size, so the size checked before inference is the one made.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.upscaler.picture import Picture
from shared.contracts.options import DEFAULT_FIT, has_target
from shared.messages import UpscaleOptions

Size = tuple[int, int]


@dataclass(frozen=True)
class Placement:
    """How a source of some size becomes the output: crop, resize, pad."""

    size: Size  # the output (width, height)
    content: Size  # the resized picture inside it: smaller than `size` only for contain
    offset: Size  # where the content's top-left corner lands: contain's left and top padding
    crop: tuple[float, float, float, float]  # the source region that is resized (left, top, right, bottom)


def _rounded(n: int, num: int, den: int) -> int:
    """n * num / den to the nearest whole pixel (halves up), at least 1, exactly (integers, no float error)."""
    return max(1, (2 * n * num + den) // (2 * den))


def place(size: Size, width: int | None, height: int | None, fit: str | None) -> Placement:
    """Where a picture of `size` goes in a target of `width` x `height` (either may be None, not both)."""
    w, h = size
    whole = (0.0, 0.0, float(w), float(h))
    if width is None or height is None:
        if width is not None:
            box = (width, _rounded(h, width, w))
        elif height is not None:
            box = (_rounded(w, height, h), height)
        else:
            raise ValueError("a target needs a width or a height")
        return Placement(box, box, (0, 0), whole)
    box = (width, height)
    fit = fit or DEFAULT_FIT
    if fit == "stretch" or width * h == height * w:
        return Placement(box, box, (0, 0), whole)
    wider = width * h > height * w  # the box is wider than the picture: width binds for cover, height for contain
    if fit == "cover":
        if wider:
            kept = w * height / width  # source rows that fill the box's height once scaled to the box's width
            top = (h - kept) / 2
            return Placement(box, box, (0, 0), (0.0, top, float(w), top + kept))
        kept = h * width / height
        left = (w - kept) / 2
        return Placement(box, box, (0, 0), (left, 0.0, left + kept, float(h)))
    content = (min(width, _rounded(w, height, h)), height) if wider else (width, min(height, _rounded(h, width, w)))
    return Placement(box, content, ((width - content[0]) // 2, (height - content[1]) // 2), whole)


def scaled_size(size: Size, outscale: float) -> Size:
    """int(width * outscale) x int(height * outscale) as RealESRGANer sizes it, never below 1 pixel."""
    return max(1, int(size[0] * outscale)), max(1, int(size[1] * outscale))


def output_size(size: Size, options: UpscaleOptions, outscale: float) -> Size:
    """The size of the output for an input of `size`: the target's, else `size` scaled by `outscale`."""
    if has_target(options):
        return place(size, options.target_width, options.target_height, options.fit).size
    return scaled_size(size, outscale)


def finish(source: Picture, input_size: Size, options: UpscaleOptions, outscale: float | None) -> Picture:
    """`source` (the network's output, or the input itself for the Lanczos fallback) brought to the output's size.

    `outscale` None: the source's own size is kept (no target, no outscale: the network's native factor)."""
    if has_target(options):
        placement = place(input_size, options.target_width, options.target_height, options.fit)
        # The placement is in input pixels; the source is the same picture at some whole multiple.
        x, y = source.width / input_size[0], source.height / input_size[1]
        left, top, right, bottom = placement.crop
        resized = source.resized(placement.content, box=(left * x, top * y, right * x, bottom * y))
        return resized.padded(placement.size, placement.offset)
    if outscale is None:
        return source
    return source.resized(scaled_size(input_size, outscale))

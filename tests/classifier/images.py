"""Where the real test images live, and a few drawn ones (a cartoon, a page of text)."""

from __future__ import annotations

from pathlib import Path

import pytest
import skimage
from PIL import Image, ImageDraw, ImageFont

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
SHARED_IMAGES = Path(__file__).resolve().parents[2].parent / "shared" / "images"


def skimage_image(name: str) -> Image.Image:
    """A sample image that scikit-image ships (present wherever scikit-image is installed)."""
    return Image.open(SKIMAGE_DATA / name)


def shared_image(name: str) -> Image.Image:
    """An image from the project's shared/images (see its README.md); skips the test when it is absent."""
    path = SHARED_IMAGES / name
    if not path.is_file():
        pytest.skip(reason=f"{path} is absent: shared/images is not checked out beside the repository")
    return Image.open(path)


def draw_cartoon(size: tuple[int, int] = (480, 360)) -> Image.Image:
    """Flat colour shapes with black outlines: sky, hill, a smiling sun, a house."""
    image = Image.new("RGB", size, (120, 190, 240))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle((0, h * 0.72, w, h), fill=(90, 170, 70), outline="black", width=3)
    draw.ellipse((w * 0.12, h * 0.22, w * 0.46, h * 0.67), fill=(250, 210, 60), outline="black", width=4)
    # The sun has eyes and a smile: the face cascade may fire on it, and it must still read as a cartoon.
    draw.ellipse((w * 0.23, h * 0.36, w * 0.27, h * 0.42), fill="black")
    draw.ellipse((w * 0.31, h * 0.36, w * 0.35, h * 0.42), fill="black")
    draw.arc((w * 0.21, h * 0.42, w * 0.37, h * 0.58), 20, 160, fill="black", width=4)
    draw.polygon([(w * 0.54, h * 0.7), (w * 0.71, h * 0.28), (w * 0.88, h * 0.7)], fill=(220, 60, 60))
    draw.polygon([(w * 0.54, h * 0.7), (w * 0.71, h * 0.28), (w * 0.88, h * 0.7)], outline="black", width=4)
    draw.rectangle((w * 0.62, h * 0.5, w * 0.69, h * 0.7), fill=(120, 70, 30), outline="black", width=3)
    return image


def draw_text_page(size: tuple[int, int] = (640, 480), font_px: int = 20) -> Image.Image:
    """Several lines of black text on white, as a screenshot or a clean scan shows them."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_px)
    lines = [
        "Image super-resolution task system",
        "The classifier reads an image once and",
        "returns its category, width and height.",
        "Documents go to the text model, flat",
        "illustrations to the anime model and",
        "everything else to the photo model.",
        "0123456789 !? The quick brown fox jumps",
        "over the lazy dog; pack my box with five",
        "dozen liquor jugs. Sphinx of black quartz,",
        "judge my vow. How vexingly quick daft",
        "zebras jump! Waltz, bad nymph, for quick",
        "jigs vex. Glib jocks quiz nymph to vex.",
    ]
    line_px = round(font_px * 1.6)
    for row, line in enumerate(lines):
        y = 20 + row * line_px
        if y + line_px > size[1]:
            break
        draw.text((24, y), line, fill="black", font=font)
    return image

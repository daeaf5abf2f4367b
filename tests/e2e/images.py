"""Real photographs, shrunk to test-friendly sizes, as encoded bytes."""

from __future__ import annotations

import io
from pathlib import Path

import skimage.data
from PIL import Image

SKIMAGE_DATA = Path(skimage.data.__file__).parent


def photo(name: str = "chelsea.png", size: tuple[int, int] = (48, 32), fmt: str = "PNG") -> bytes:
    """A real photo from scikit-image's data folder, resized, encoded as `fmt`."""
    image = Image.open(SKIMAGE_DATA / name).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size

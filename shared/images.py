"""Decoding and encoding images, with failures turned into readable input errors."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from shared.errors import InputError

OUTPUT_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def format_for_path(path: str) -> str | None:
    """Output format named by a path's extension (png, jpeg, webp), or None."""
    lowered = path.lower().split("?", 1)[0]
    for extension, fmt in _EXTENSIONS.items():
        if lowered.endswith(extension):
            return fmt
    return None


def output_format(requested: str | None, output_url: str) -> str:
    """The output format: as requested, else from the URL's extension, else PNG (lossless)."""
    return requested or format_for_path(output_url) or "png"


def open_image(data: bytes, *, load: bool = True) -> Image.Image:
    """Decode `data`; anything Pillow cannot fully decode is an InputError naming the reason."""
    if not data:
        raise InputError("input is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if load:
                image.load()
            else:
                image.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"input image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"input is not an image Pillow can decode ({len(data)} bytes)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"input image is corrupt or truncated: {exc}") from exc
    return image


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """Encode for the output format; JPEG cannot hold alpha, so it is flattened onto white."""
    buffer = io.BytesIO()
    if fmt == "jpeg":
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat
        elif image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(buffer, format="JPEG", quality=95)
    elif fmt == "png":
        image.save(buffer, format="PNG", compress_level=3)
    elif fmt == "webp":
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.save(buffer, format="WEBP", quality=95)
    else:
        raise InputError(f"unsupported output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    return buffer.getvalue()

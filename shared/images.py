"""Decoding and encoding images, with failures turned into readable input errors."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from pathlib import PurePosixPath
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from PIL import BmpImagePlugin, GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin

from shared.runtime.errors import InputError

OUTPUT_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
_T = TypeVar("_T")

# The formats inputs may be in (TM_INPUT_FORMATS picks among them), each read by its own plugin.
_PLUGINS: dict[str, Callable[[io.BytesIO], Image.Image]] = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.jpeg_factory,
    "webp": WebPImagePlugin.WebPImageFile,
    "gif": GifImagePlugin.GifImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
}
DECODABLE_FORMATS = frozenset(_PLUGINS)
_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
# Magic bytes: the decodable formats, then others that are named in refusals ("input format pdf ...").
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"%PDF-", "pdf"),
    (b"%!PS", "postscript"),
    (b"\xc5\xd0\xd3\xc6", "postscript"),
    (b"8BPS", "psd"),
    (b"\x00\x00\x01\x00", "ico"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jxl"),
    (b"\xff\x0a", "jxl"),
    (b"qoif", "qoi"),
    (b"PK\x03\x04", "zip"),
    (b"\x1f\x8b", "gzip"),
)
_DOCUMENTS = frozenset({"html", "xml", "pdf", "postscript", "zip", "gzip"})
_FTYP_BRANDS = {b"heic": "heic", b"heix": "heic", b"mif1": "heif", b"msf1": "heif", b"avif": "avif", b"avis": "avif"}


def format_for_url(url: str) -> str | None:
    """Output format named by the extension of a URL's path (png, jpeg, webp; the query is ignored), or None."""
    path = unquote(urlsplit(url).path)
    if path.endswith("/"):
        return None  # PurePosixPath would drop the slash and read "dir.png/" as a .png file
    return _EXTENSIONS.get(PurePosixPath(path).suffix.lower())


def output_format(requested: str | None, output_url: str) -> str:
    """The output format: as requested, else from the URL's extension, else PNG (lossless)."""
    return requested or format_for_url(output_url) or "png"


def sniff_format(data: bytes) -> str | None:
    """The format `data` is in by its first bytes ("png", "pdf", "html" ...), whatever a URL or header claims."""
    for signature, fmt in _SIGNATURES:
        if data.startswith(signature):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12])
    if re.match(rb"P[1-7]\s", data):
        return "netpbm"
    text = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<"):
        if b"<svg" in text:
            return "svg"
        if re.match(rb"<(!doctype html|html|head|body)\b", text):
            return "html"
        if text.startswith(b"<?xml"):
            return "xml"
    return None


def open_image(
    data: bytes, *, load: bool = True, max_pixels: int | None = None, formats: Iterable[str] = DECODABLE_FORMATS
) -> Image.Image:
    """Decode `data` (or, with load=False, only check its structure); every failure is an InputError.

    The format comes from the magic bytes and must be one of `formats`; the size comes from the header
    and must be at most `max_pixels` (None: Pillow's own decompression-bomb limit), both checked before
    any pixel is decoded. Only the plugin of that format reads the bytes, never another that would also
    claim them (Pillow's EPS plugin runs Ghostscript, for one).
    """
    if not data:
        raise InputError("input is empty (0 bytes)")
    allowed = accepted_formats(formats)
    fmt = sniff_format(data)
    if fmt is None:
        raise InputError(f"input is not an image in a known format ({len(data)} bytes); accepted: {_list(allowed)}")
    if fmt not in allowed:
        what = "" if fmt in _PLUGINS else " (not an image)" if fmt in _DOCUMENTS else " (not decodable here)"
        raise InputError(f"input format {fmt} is not accepted{what}; accepted: {_list(allowed)}")
    if fmt == "webp" and (declared := _webp_size(data)):
        _check_pixels(declared, max_pixels)  # libwebp allocates the canvas as soon as it parses the header
    image = _decode(lambda: _PLUGINS[fmt](io.BytesIO(data)), fmt)  # parses the header only
    _check_pixels(image.size, max_pixels)
    _decode(image.load if load else image.verify, fmt)
    return image


def accepted_formats(names: Iterable[str]) -> frozenset[str]:
    """The decodable formats among `names` (as TM_INPUT_FORMATS lists them; "jpg" and "tif" are aliases)."""
    return frozenset(_ALIASES.get(name, name) for name in names) & DECODABLE_FORMATS


def _check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit is not None and width * height > limit:
        name = "TM_MAX_INPUT_PIXELS" if max_pixels is not None else "the decompression-bomb limit"
        raise InputError(
            f"input image is {width}x{height} ({_mp(width * height)} MP), over the {_mp(limit)} MP limit ({name}); "
            "refused before decoding"
        )
    if width < 1 or height < 1:
        raise InputError(f"input image has no pixels ({width}x{height})")


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP file's first chunk declares (extended, lossless or lossy), None if unreadable."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def _decode(step: Callable[[], _T], fmt: str) -> _T:
    """Run one Pillow step on untrusted bytes: whatever it raises is the bytes' fault, so an InputError."""
    try:
        return step()
    except MemoryError:
        raise  # the machine's state, not the input's: retried
    except Image.DecompressionBombError as exc:  # a plugin's own check, e.g. a GIF frame beyond the screen
        raise InputError(f"input image ({fmt}) is too large to decode safely: {exc}") from exc
    except Exception as exc:  # Pillow's parsers raise OSError, SyntaxError, struct.error, IndexError, ...
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError | SyntaxError) else str(exc)
        raise InputError(f"input image ({fmt}) is corrupt or truncated: {reason}") from exc


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.4g}"


def _list(formats: Iterable[str]) -> str:
    return ", ".join(sorted(formats)) or "(none)"


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

"""Weight files on disk and their download: where each official model's file lives, whether it is
installed, and fetching it from the official URL (or a mirror) with its published size and sha256 checked.

No torch here: the CLI and the API can answer "which models are installed" and download them without
loading a network (services/upscaler/weights.py reads and loads them).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from shared import config
from shared.contracts import catalog
from shared.runtime.errors import ConfigurationError

MODEL_DIR_ENV = "TM_MODEL_DIR"
_CHUNK_BYTES = 1 << 20


class DownloadError(Exception):
    """A weight file could not be fetched or did not match its published size and sha256."""


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

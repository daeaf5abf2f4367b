"""Weight files on disk and their download: where each official model's file lives, whether it is
installed (or being downloaded), which installed network stands in for a missing one, and fetching it
from the official URL (or a mirror) with its published size and sha256 checked, continuing an
interrupted download with an HTTP Range request.

No torch here: the CLI and the API can answer "which models are installed" and download them without
loading a network (services/upscaler/weights.py reads and loads them).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import httpx

from shared import config
from shared.contracts import catalog
from shared.runtime.errors import ConfigurationError

MODEL_DIR_ENV = "TM_MODEL_DIR"
_CHUNK_BYTES = 1 << 20  # reading files to hash them
_STREAM_BYTES = 64 << 10  # writing a download: small, so the part grows (stays fresh) on a slow link too
CONNECT_TIMEOUT_S = 15.0  # no network should fail fast, not after the read timeout
# A part file written within this long is a download under way; an older one, an interrupted download.
DOWNLOAD_FRESH_S = 30.0


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


# README's first example names it, and at 2.5 MB it is in place within seconds of a first `up`, so it stands in
# for a routed model still downloading or out of reach (RealESRGAN_x4plus alone is 67 MB).
FIRST_RUN_MODEL = "realesr-animevideov3"


def default_models() -> list[str]:
    """The models `task-manager up` makes sure of: every model catalog.ROUTES names, the denoise helper when
    the routed general model is one (a task's `denoise_strength` blends the two), and FIRST_RUN_MODEL."""
    names = list(dict.fromkeys(catalog.ROUTES.values()))
    if catalog.DENOISE_MODEL in names:
        names.append(catalog.DENOISE_HELPER)
    return list(dict.fromkeys([*names, FIRST_RUN_MODEL]))


# The networks that stand in for a routed model whose weights are missing, most alike first: the GAN-trained
# x4 photo nets, the anime ones, then the x2 nets (the engine resizes their output to the routed scale).
_PHOTO_LIKE = ("RealESRGAN_x4plus", "realesr-general-x4v3", "RealESRNet_x4plus")
_ANIME_LIKE = ("RealESRGAN_x4plus_anime_6B", "realesr-animevideov3", "RealESRGANv2-animevideo-xsx4")
_X2 = ("RealESRGAN_x2plus", "RealESRGANv2-animevideo-xsx2")
STAND_IN_ORDER = _PHOTO_LIKE + _ANIME_LIKE + _X2


def _closest_first(name: str) -> list[str]:
    """The other networks, the closest to `name` first (anime nets first for an anime model)."""
    order = (_ANIME_LIKE + _PHOTO_LIKE if name in _ANIME_LIKE else _PHOTO_LIKE + _ANIME_LIKE) + _X2
    return [other for other in order if other != name]


def stand_in(name: str, model_dir: Path) -> str | None:
    """The installed network closest to `name`, or None: a Lanczos resize."""
    return next((other for other in _closest_first(name) if is_installed(other, model_dir)), None)


def stand_ins_arriving(name: str, model_dir: Path) -> list[str]:
    """The networks that could stand in for `name` and are being downloaded now, the closest first."""
    return [other for other in _closest_first(name) if downloading(other, model_dir)]


def part_path(name: str, model_dir: Path) -> Path:
    """Where a download of `name` keeps its bytes until they are verified: in progress, or interrupted and
    continued by the next `download`."""
    return Path(model_dir) / f".{catalog.get(name).filename}.part"


def downloading(name: str, model_dir: Path, fresh_s: float = DOWNLOAD_FRESH_S) -> bool:
    """Whether a download of `name` is under way: its `.part` file was written within the last `fresh_s` seconds
    (by any process sharing the model dir; an interrupted download's file goes stale)."""
    try:
        return time.time() - part_path(name, model_dir).stat().st_mtime < fresh_s
    except FileNotFoundError:
        return False


def downloads_under_way(model_dir: Path) -> dict[str, tuple[int, int]]:
    """Every model being downloaded into `model_dir` now: name -> (bytes so far, bytes in all)."""
    found = {}
    for name, spec in catalog.MODELS.items():
        if downloading(name, model_dir):
            try:
                found[name] = (part_path(name, model_dir).stat().st_size, spec.size_bytes)
            except FileNotFoundError:
                continue
    return found


def _sha256(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest


def _verified(path: Path, spec: catalog.ModelSpec) -> bool:
    return path.is_file() and path.stat().st_size == spec.size_bytes and _sha256(path).hexdigest() == spec.sha256


@contextlib.contextmanager
def _claimed(part: Path) -> Iterator[BinaryIO]:
    """`part` opened for appending and locked: a second downloader of the same file waits here for the first."""
    while True:
        f = part.open("ab")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if os.stat(part).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()  # the holder renamed or removed it while we waited: open the file now at that path
    try:
        yield f
    finally:
        try:
            if os.fstat(f.fileno()).st_size == 0:
                part.unlink(missing_ok=True)  # nothing to resume: leave no trace
        finally:
            f.close()


def download(
    name: str,
    model_dir: Path,
    mirror: str | None = None,
    *,
    timeout_s: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Fetch official model `name` into `model_dir` and return its path.

    Streams into `part_path` (locked: a second download of the same file waits for the first, then finds
    it done), checks the published size and sha256, then renames it into place, so the target is either
    absent or complete. A present file with the right hash is kept. An interrupted download keeps its part
    and the next call continues it with an HTTP Range request (from the start when the server ignores it).
    `progress(done_bytes, total_bytes)` is called after each chunk; an exception it raises aborts the
    download (the part is kept). Raises DownloadError.
    """
    spec = catalog.get(name)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / spec.filename
    if _verified(target, spec):
        return target
    part = part_path(name, model_dir)
    with _claimed(part) as out:
        if _verified(target, spec):  # another process finished it while we waited for the lock
            out.truncate(0)
            return target
        os.utime(part)  # a download is under way (`downloading`), before the first byte arrives
        url = download_url(name, mirror)
        try:
            digest = _fetch(out, part, spec, url, timeout_s, progress)
        except httpx.HTTPError as exc:
            kept = os.fstat(out.fileno()).st_size
            resume = f" ({kept} bytes kept to resume)" if kept else ""
            raise DownloadError(f"{name}: downloading {url} failed{resume}: {exc}") from exc
        if digest.hexdigest() != spec.sha256:
            out.truncate(0)
            raise DownloadError(f"{name}: sha256 mismatch for {url}: got {digest.hexdigest()}, expected {spec.sha256}")
        os.replace(part, target)
    return target


def _fetch(
    out: BinaryIO,
    part: Path,
    spec: catalog.ModelSpec,
    url: str,
    timeout_s: float,
    progress: Callable[[int, int], None] | None,
) -> hashlib._Hash:
    """Bring `out` (the locked part file) to the full `spec.size_bytes`, continuing what it holds; its sha256."""
    done = os.fstat(out.fileno()).st_size
    if done > spec.size_bytes:
        out.truncate(0)
        done = 0
    digest = _sha256(part) if done else hashlib.sha256()
    if done == spec.size_bytes:
        return digest  # complete but not yet renamed (the last run stopped in between)
    headers = {"Range": f"bytes={done}-"} if done else {}
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
    with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout) as resp:
        if resp.status_code == 206 and done and resp.headers.get("content-range", "").startswith(f"bytes {done}-"):
            pass  # continued where the part ends
        elif resp.status_code == 200:
            if done:  # the server ignores Range: the whole file again, from the start
                out.truncate(0)
                done, digest = 0, hashlib.sha256()
        else:
            if resp.status_code in (206, 416):  # a range we did not ask for, or none the server has: start over
                out.truncate(0)
            raise DownloadError(f"{spec.name}: GET {url} answered HTTP {resp.status_code}")
        for chunk in resp.iter_bytes(_STREAM_BYTES):
            done += len(chunk)
            if done > spec.size_bytes:
                out.truncate(0)
                raise DownloadError(f"{spec.name}: {url} is larger than the expected {spec.size_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
            out.flush()  # on disk at once: what a resume continues from, and `downloading` sees the part move
            if progress is not None:
                progress(done, spec.size_bytes)
        os.fsync(out.fileno())
    if done != spec.size_bytes:
        raise DownloadError(
            f"{spec.name}: {url} ended after {done} of {spec.size_bytes} bytes (kept; run again to resume)"
        )
    return digest

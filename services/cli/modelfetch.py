"""`task-manager up`'s model weights: fetch the default models' missing files in the background, say what is off.

`up` serves at once. The downloads run in daemon threads, one per model, so each pending model has its
`.part` file from the start and the upscaler waits for it (`TM_MODEL_WAIT_S`, services/upscaler/engine.py).
`modelfiles.download` continues an interrupted file with an HTTP Range request; a connection lost mid-way
is resumed here a few times. The log gets a line per 10% of each model, one when each is installed, and,
when some cannot be had, ONE line (`unavailable_line`) naming them, what runs meanwhile, and the fix.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from shared import modelfiles
from shared.config import Settings
from shared.contracts import catalog

RESUME_ATTEMPTS = 5  # tries of one model while each gets further than the last (backoff 1, 2, 4 ... s)
READ_TIMEOUT_S = 60.0
log = structlog.get_logger()


class _Stopped(Exception):
    """`up` is stopping: the download ends here, its part file kept for the next start."""


class _Progress:
    """`download`'s progress callback: a log line each time a model passes another 10%."""

    def __init__(self, name: str, stop: threading.Event) -> None:
        self.name = name
        self.stop = stop
        self.done = 0
        self._decile: int | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.stop.is_set():
            raise _Stopped
        self.done = done
        decile = done * 10 // total
        if self._decile is not None and self._decile < decile < 10:
            log.info("model_download", model=self.name, percent=decile * 10, mb=round(done / 1e6, 1))
        if self._decile is None or decile > self._decile:
            self._decile = decile  # the first call only sets where we are (a resumed download starts midway)


class Downloads:
    """The background downloads of one `up`: `start`, then `stop` when `up` stops (parts are kept)."""

    def __init__(self, names: list[str], model_dir: Path, mirror: str | None) -> None:
        self.names = names
        self.model_dir = Path(model_dir)
        self.mirror = mirror or None
        self.failures: dict[str, str] = {}  # name -> why, once `finished` is set
        self.finished = threading.Event()
        self._stop = threading.Event()

    def start(self) -> None:
        """One daemon thread per model (they never hold up `up`'s exit), and one that reports when all are done;
        each runs in a copy of this context, so its log lines carry what is bound here (service=supervisor)."""
        threads = [_thread(f"download-{name}", self._fetch, name) for name in self.names]
        for thread in threads:
            thread.start()
        _thread("download-report", self._report, threads).start()

    def stop(self) -> None:
        self._stop.set()

    def _fetch(self, name: str) -> None:
        progress = _Progress(name, self._stop)
        started = time.monotonic()
        size = catalog.get(name).size_bytes
        error = ""
        for attempt in range(RESUME_ATTEMPTS):
            part = modelfiles.part_path(name, self.model_dir)
            if part.is_file() and part.stat().st_size:
                log.info("model_download_resuming", model=name, percent=part.stat().st_size * 100 // size)
            before = progress.done
            try:
                path = modelfiles.download(
                    name, self.model_dir, self.mirror, timeout_s=READ_TIMEOUT_S, progress=progress
                )
            except _Stopped:
                return
            except modelfiles.DownloadError as exc:
                error = str(exc)
                # Only a transfer that got further and kept its part is worth continuing (not a 404, a bad hash).
                if not (part.is_file() and progress.done > before) or self._stop.wait(2**attempt):
                    break
                continue
            except OSError as exc:  # the model dir: read-only, full
                error = f"{name}: {exc}"
                break
            log.info("model_installed", model=name, path=str(path), seconds=round(time.monotonic() - started, 1))
            return
        self.failures[name] = error

    def _report(self, threads: list[threading.Thread]) -> None:
        for thread in threads:
            thread.join()
        self.failures = {name: self.failures[name] for name in self.names if name in self.failures}  # in order
        if self.failures and not self._stop.is_set():
            log.warning("models_unavailable", message=unavailable_line(self.failures, self.model_dir, self.mirror))
        self.finished.set()


def _thread(name: str, target: Callable[..., None], *args: object) -> threading.Thread:
    return threading.Thread(target=contextvars.copy_context().run, args=(target, *args), name=name, daemon=True)


def missing_defaults(model_dir: Path) -> list[str]:
    """The models `up` makes sure of (modelfiles.default_models) whose weights are not in `model_dir`."""
    return [name for name in modelfiles.default_models() if not modelfiles.is_installed(name, model_dir)]


def start(settings: Settings) -> Downloads | None:
    """Start downloading the missing default models (TM_MODEL_AUTO_DOWNLOAD), or say in one line that they are
    missing; None when there is nothing to download."""
    missing = missing_defaults(settings.model_dir)
    if not missing:
        return None
    if not settings.model_auto_download:
        why = dict.fromkeys(missing, "TM_MODEL_AUTO_DOWNLOAD=0")
        log.warning("models_unavailable", message=unavailable_line(why, settings.model_dir, settings.model_mirror))
        return None
    source = settings.model_mirror or catalog.OFFICIAL_URL_PREFIX
    size_mb = sum(catalog.get(name).size_bytes for name in missing) / 1e6
    log.info(
        "models_downloading",
        models=missing,
        mb=round(size_mb, 1),
        source=source,
        model_dir=str(settings.model_dir),
        tasks_wait_s=settings.model_wait_s,
    )
    downloads = Downloads(missing, settings.model_dir, settings.model_mirror)
    downloads.start()
    return downloads


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def unavailable_line(failures: dict[str, str], model_dir: Path, mirror: str | None) -> str:
    """The one line `up` logs when weights cannot be had: which, why (the first failure), what runs
    meanwhile for which categories, and the command that fixes it."""
    names = list(failures)
    meanwhile: dict[str, list[str]] = {}
    for category, routed in catalog.ROUTES.items():
        if routed in failures:
            runner = modelfiles.stand_in(routed, model_dir) or "a Lanczos resize"
            meanwhile.setdefault(runner, []).append(category.value)
    instead = "; ".join(f"{_and(categories)} tasks run {runner}" for runner, categories in meanwhile.items())
    # `models download` adds the denoise helper to the general model itself.
    fetch = [n for n in names if not (n == catalog.DENOISE_HELPER and catalog.DENOISE_MODEL in names)]
    if mirror:
        where = f"check that TM_MODEL_MIRROR={mirror} serves the release layout (<release>/<file>.pth)"
    else:
        where = f"where GitHub is out of reach, set TM_MODEL_MIRROR to a copy of {catalog.OFFICIAL_URL_PREFIX}"
    return (
        f"model weights missing: {_and(names)} ({next(iter(failures.values()))})"
        + (f"; meanwhile {instead}" if instead else "")
        + f"; fix: task-manager models download {' '.join(fetch)} ({where})"
    )

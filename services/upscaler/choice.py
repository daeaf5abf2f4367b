"""Which network runs a task when its model's weights are missing: wait for a download under way (up to
`wait_s`), else the closest installed network (`modelfiles.stand_in`) or one on its way, else Lanczos.

Runs in the handler's thread (the worker calls the engine through asyncio.to_thread), so it polls the model
dir without holding up the event loop or other tasks; `cancel` (set when the handler is cancelled: shutting
down, or a stall) ends a wait with plan.Cancelled.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.upscaler.plan import Cancelled
from shared import modelfiles

DOWNLOAD_POLL_S = 1.0  # how often a task waiting for its model's download looks for the file
log = structlog.get_logger()


@dataclass(frozen=True)
class Choice:
    """The network to run (None: a Lanczos resize) and, when it is not the asked one, why."""

    network: str | None
    absent: str | None = None  # "not installed" | "still downloading"


def choose(
    name: str, needed: list[str], explicit: bool, model_dir: Path, wait_s: float, cancel: threading.Event | None
) -> Choice:
    """The network for model `name` (whose run needs the weights of `needed`). An `explicit` model (named by the
    task) must be installed: ConfigurationError with the command that installs it."""
    missing = await_weights(needed, model_dir, wait_s, cancel)
    if not missing:
        return Choice(name)
    if explicit:
        modelfiles.require(missing[0], model_dir)
    # routed, so no denoise helper: only the model itself can be missing
    absent = "still downloading" if modelfiles.downloading(name, model_dir) else "not installed"
    stand_in = modelfiles.stand_in(name, model_dir)
    if stand_in is None and (arriving := modelfiles.stand_ins_arriving(name, model_dir)):
        await_weights(arriving[:1], model_dir, wait_s, cancel)  # a network on its way beats Lanczos now
        stand_in = modelfiles.stand_in(name, model_dir)
    return Choice(stand_in, absent)


def await_weights(names: list[str], model_dir: Path, wait_s: float, cancel: threading.Event | None) -> list[str]:
    """Those of `names` whose weights are missing, after waiting up to `wait_s` for any being downloaded."""
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        missing = [n for n in names if not modelfiles.is_installed(n, model_dir)]
        pending = [n for n in missing if modelfiles.downloading(n, model_dir)]
        left_s = deadline - time.monotonic()
        if not pending or left_s <= 0:
            if announced:
                log.info("model_wait_over", models=pending or names, installed=not missing)
            return missing
        if not announced:
            log.info("model_wait", models=pending, wait_s=round(left_s))
            announced = True
        if cancel is None:
            time.sleep(min(DOWNLOAD_POLL_S, left_s))
        elif cancel.wait(min(DOWNLOAD_POLL_S, left_s)):
            raise Cancelled("cancelled while waiting for the model's download")

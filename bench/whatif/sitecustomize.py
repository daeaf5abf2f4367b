"""What-if patches: measure a proposal before anyone changes shared/ or services/.

The load generator puts this directory on the services' PYTHONPATH when it is given `--whatif`, so
Python imports this module at start-up, before `python -m services.<name>` imports the services;
TM_BENCH_WHATIF names the patches to apply (comma-separated). Each patch replaces one function the
way the matching proposal in bench/README.md would change it. Benchmark use only: a patch is the
smallest change that shows the gain, not production code (no tests, no edge cases beyond the
benchmark's). A patch that fails to apply stops the process, so a run never silently measures the
unpatched code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def quiet_logs() -> None:
    """Log level WARNING: no per-message `stage_outcome` / `task_submitted` lines (cost of logging)."""
    from shared import logging as tm_logging

    configure = tm_logging.configure_logging

    def configure_quietly(service: str, level: str = "INFO"):  # type: ignore[no-untyped-def]
        return configure(service, "WARNING")

    tm_logging.configure_logging = configure_quietly


def blobs_kv() -> None:
    """Intermediate images in a KV bucket (one message each) instead of the object store: a put is
    one publish (not info lookup + chunk + meta), a get one direct get (not info lookup + an ordered
    consumer created and abandoned), and a task's clean-up one purge (not 2 x info + meta + purge)."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import KeyNotFoundError

    from shared import blobs as tm_blobs
    from shared.runtime.errors import RetryableError

    bucket_name = "TM_BENCH_BLOBS"
    buckets: dict[int, object] = {}

    async def bucket(store):  # type: ignore[no-untyped-def]
        js = getattr(store, "_js", store)  # an ObjectStore (writes, clean-up) or the JetStream context (reads)
        kv = buckets.get(id(js))
        if kv is None:
            config = KeyValueConfig(bucket=bucket_name, history=1, storage=StorageType.FILE, direct=True)
            kv = buckets[id(js)] = await js.create_key_value(config)
        return kv

    async def read_blob(store, name: str) -> bytes:  # type: ignore[no-untyped-def]
        try:
            entry = await (await bucket(store)).get(name.replace("/", "."))
        except KeyNotFoundError as exc:
            raise RetryableError(f"intermediate object {name} is missing") from exc
        return entry.value or b""

    async def write_blob(store, name: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
        await (await bucket(store)).put(name.replace("/", "."), data)

    async def discard_task_blobs(store, task_id: str) -> None:  # type: ignore[no-untyped-def]
        await bucket(store)
        await store._js.purge_stream(f"KV_{bucket_name}", subject=f"$KV.{bucket_name}.{task_id}.>")

    tm_blobs.read_blob = read_blob
    tm_blobs.write_blob = write_blob
    tm_blobs.discard_task_blobs = discard_task_blobs


def no_change_events() -> None:
    """Without the per-change events of shared/taskstate/events.py (only the terminal events): their cost."""
    from shared.taskstate import store as tm_tasks

    async def announce(self, change) -> None:  # type: ignore[no-untyped-def]
        return None

    publish_event = tm_tasks.TaskStore.publish_event

    async def terminal_only(self, status, change=None) -> None:  # type: ignore[no-untyped-def]
        await publish_event(self, status)

    tm_tasks.TaskStore._announce = announce  # type: ignore[method-assign]
    tm_tasks.TaskStore.publish_event = terminal_only  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {
    # uvloop, async-dep, no-final-progress, reuse-revision, kv-direct, blobs-direct and face-min-48
    # were measured here and are now in shared/ and services/ (bench/README.md, "After the fixes").
    "quiet-logs": quiet_logs,
    "blobs-kv": blobs_kv,
    "no-change-events": no_change_events,
}


def _apply() -> None:
    wanted = [name for name in os.environ.get("TM_BENCH_WHATIF", "").split(",") if name]
    for name in wanted:
        try:
            PATCHES[name]()
        except Exception as exc:
            print(f"what-if patch {name!r} failed: {exc!r}", file=sys.stderr, flush=True)
            os._exit(3)
    if wanted:
        print(f"what-if patches applied: {', '.join(wanted)}", file=sys.stderr, flush=True)


_apply()

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
from collections import OrderedDict
from collections.abc import Callable


def uvloop() -> None:
    """uvloop for asyncio.run; uvicorn picks uvloop and httptools by itself once they import."""
    import uvloop as _uvloop

    _uvloop.install()


def async_dep() -> None:
    """The API's context dependency as `async def`: FastAPI runs a plain `def` dependency in a
    worker thread, one thread hop per request for a dictionary lookup."""
    from typing import Annotated

    from fastapi import Depends, Request

    from services.api import deps

    async def get_context(request: Request) -> deps.ApiContext:
        return request.app.state.context

    # This module's annotations are strings (PEP 563) naming function locals: give FastAPI the types.
    get_context.__annotations__ = {"request": Request, "return": deps.ApiContext}
    deps.get_context = get_context  # type: ignore[assignment]
    deps.ContextDep = Annotated[deps.ApiContext, Depends(get_context)]  # type: ignore[misc]


def quiet_logs() -> None:
    """Log level WARNING: no per-message `stage_outcome` / `task_submitted` lines (cost of logging)."""
    from shared import logging as tm_logging

    configure = tm_logging.configure_logging

    def configure_quietly(service: str, level: str = "INFO"):  # type: ignore[no-untyped-def]
        return configure(service, "WARNING")

    tm_logging.configure_logging = configure_quietly


def no_final_progress() -> None:
    """No progress write at fraction 1.0: the stage's own finish write follows at once."""
    from shared.stage import Job

    report = Job.report_progress

    async def report_progress(self: Job, fraction: float, min_interval_s: float = 0.25) -> None:
        if fraction >= 1.0:
            self.touch()
            return
        await report(self, fraction, min_interval_s)

    Job.report_progress = report_progress  # type: ignore[method-assign]


def reuse_revision() -> None:
    """TaskStore.update tries the compare-and-set on the entry and revision this process wrote last
    (the stage's start write) before reading it again: one KV get fewer per later write."""
    from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

    from shared.state import TaskStatus
    from shared.tasks import MAX_CAS_ATTEMPTS, TaskGoneError, TaskStore

    last: OrderedDict[str, tuple[object, int]] = OrderedDict()

    def remember(task_id: str, status, revision: int) -> None:  # type: ignore[no-untyped-def]
        if status.state.terminal:
            return
        last[task_id] = (status.model_copy(deep=True), revision)
        while len(last) > 4096:
            last.popitem(last=False)

    async def write(self: TaskStore, task_id: str, status, revision: int, was_terminal: bool) -> int:  # type: ignore[no-untyped-def]
        new_revision = await self._kv.update(task_id, status.to_json(), last=revision)
        if status.state.terminal and not was_terminal:
            await self.publish_event(status)
        remember(task_id, status, new_revision)
        return new_revision

    async def update(self: TaskStore, task_id: str, transition: Callable) -> object:
        known = last.pop(task_id, None)
        if known is not None:
            status, revision = known
            status = status.model_copy(deep=True)  # type: ignore[attr-defined]
            try:
                transition(status)
                await write(self, task_id, status, revision, False)
                return status
            except KeyWrongLastSequenceError:
                pass  # someone else wrote meanwhile: the usual read, apply, write below
            except Exception:  # a transition refusing a stale copy: decide on a fresh read
                pass
        for _ in range(MAX_CAS_ATTEMPTS):
            try:
                entry = await self._kv.get(task_id)
            except KeyNotFoundError:
                entry = None
            if entry is None or entry.value is None or entry.revision is None:
                raise TaskGoneError(task_id)
            status = TaskStatus.from_json(entry.value)
            was_terminal = status.state.terminal
            transition(status)
            try:
                await write(self, task_id, status, entry.revision, was_terminal)
            except KeyWrongLastSequenceError:
                continue
            return status
        raise RuntimeError(f"task {task_id}: state update kept conflicting")

    TaskStore.update = update  # type: ignore[method-assign]


def kv_direct() -> None:
    """TM_TASKS with allow_direct: KV gets become $JS.API.DIRECT.GET (raw message, no JSON/base64
    envelope, off the JetStream API queue) instead of $JS.API.STREAM.MSG.GET."""
    from nats.js import client

    create = client.JetStreamContext.create_key_value

    async def create_key_value(self, config=None, **params):  # type: ignore[no-untyped-def]
        if config is not None and config.bucket == "TM_TASKS":
            config = config.evolve(direct=True)
        return await create(self, config, **params)

    client.JetStreamContext.create_key_value = create_key_value  # type: ignore[method-assign]


def blobs_kv() -> None:
    """Intermediate images in a KV bucket (one message each) instead of the object store: a put is
    one publish (not info lookup + chunk + meta), a get one direct get (not info lookup + an ordered
    consumer created and abandoned), and a task's clean-up one purge (not 2 x info + meta + purge)."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import KeyNotFoundError

    from shared import blobs as tm_blobs
    from shared.errors import RetryableError

    bucket_name = "TM_BENCH_BLOBS"
    buckets: dict[int, object] = {}

    async def bucket(store):  # type: ignore[no-untyped-def]
        js = store._js
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


def blobs_direct() -> None:
    """read_blob with direct gets on the object store's stream (it has allow_direct): the meta
    message, then each chunk, no consumer. nats-py's ObjectStore.get creates an ordered consumer
    per read, which lingers ~5 s after it is done; nats-server 2.15 allows 1000 per stream."""
    import base64
    import hashlib
    import json

    from nats.js.errors import NotFoundError

    from shared import blobs as tm_blobs
    from shared.errors import RetryableError

    async def read_blob(store, name: str) -> bytes:  # type: ignore[no-untyped-def]
        js, bucket = store._js, store._name
        stream = f"OBJ_{bucket}"
        meta_subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
        missing = RetryableError(f"intermediate object {name} is missing")
        try:
            info = json.loads((await js.get_msg(stream, subject=meta_subject, direct=True)).data)
        except NotFoundError as exc:
            raise missing from exc
        if info.get("deleted"):
            raise missing
        chunk_subject = f"$O.{bucket}.C.{info['nuid']}"
        data, seq = bytearray(), 1
        for _ in range(info.get("chunks") or 0):
            chunk = await js.get_msg(stream, seq=seq, subject=chunk_subject, direct=True, next=True)
            data += chunk.data or b""
            seq = (chunk.seq or seq) + 1
        expected = info.get("digest", "").removeprefix("SHA-256=")
        if expected and base64.urlsafe_b64decode(expected) != hashlib.sha256(data).digest():
            raise RetryableError(f"intermediate object {name} does not match its digest")
        return bytes(data)

    tm_blobs.read_blob = read_blob


def face_min_48() -> None:
    """The classifier skips the face scan when the image's shorter side is under 48 px (twice the
    cascade's 24 px window): a 16 px image is no longer enlarged to 256 px and scanned."""
    from services.classifier import features

    largest_face = features.largest_face

    def largest_face_unless_tiny(s, short_side: int, max_long_side: int) -> float:  # type: ignore[no-untyped-def]
        if min(s.rgb.shape[:2]) < 48:
            return 0.0
        return largest_face(s, short_side, max_long_side)

    features.largest_face = largest_face_unless_tiny


PATCHES: dict[str, Callable[[], None]] = {
    "uvloop": uvloop,
    "async-dep": async_dep,
    "quiet-logs": quiet_logs,
    "no-final-progress": no_final_progress,
    "reuse-revision": reuse_revision,
    "kv-direct": kv_direct,
    "blobs-kv": blobs_kv,
    "blobs-direct": blobs_direct,
    "face-min-48": face_min_48,
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

"""The Celery side of bench/samework.py: task-manager's four stages as a chain of Celery tasks.

    celery -A bench.celery_tasks worker --pool prefork --concurrency 2   # how bench/celery_stack.py starts it

Each task does the work of the stage it stands for with the same code: the fetcher's format and size
check (`open_image(load=False)`), the classifier's `classify_bytes`, the upscaler's decode -> engine ->
encode (with no weights installed the engine takes its Lanczos fallback, as the upscaler does), and the
upload as a Celery user writes it: boto3 `put_object` with one client per worker process.

Images travel as a Celery user sends them: bytes in the task's arguments and return value. Celery's
default JSON serializer (kombu) writes bytes as base64, the Redis transport base64-encodes the whole
message body again, and every task's return value (the input, then the PNG) is stored in the result
backend, Celery's default. Configuration comes from the environment when the module is imported, as a
Celery app module does: the worker imports it once, before it forks the pool.
"""

from __future__ import annotations

import functools
import os

import boto3
import requests
from celery import Celery

from services.classifier.worker import classify_bytes
from services.upscaler import codec
from services.upscaler.engine import Upscaler
from shared.config import Settings
from shared.images import OUTPUT_FORMATS, open_image, output_format
from shared.messages import Category, UpscaleOptions

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("samework", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,  # a task is acknowledged once done, so a worker lost mid-task loses no task
    task_reject_on_worker_lost=True,  # ... and its message goes back to the queue
    broker_connection_retry_on_startup=True,
)


class _Process:
    """What one pool process keeps between tasks, made on its first task (after the fork)."""

    def __init__(self) -> None:
        self.settings = Settings()  # TM_MODEL_DIR, TM_DEVICE and the input limits, as the stages read them
        self.formats = self.settings.accepted_formats()
        self.http = requests.Session()  # keep-alive to the origin, as the fetcher's client
        self.s3 = boto3.client("s3")  # endpoint and credentials from the AWS_* environment
        self.engine = Upscaler(
            self.settings.model_dir,
            device=self.settings.device,
            default_tile=self.settings.tile,
            max_output_pixels=self.settings.max_output_pixels,
        )


@functools.cache
def _process() -> _Process:
    return _Process()


@app.task(name="samework.fetch")
def fetch(input_url: str) -> bytes:
    state = _process()
    response = state.http.get(input_url, timeout=state.settings.fetch_timeout_s)
    response.raise_for_status()
    data = response.content
    # The fetcher's check: format (magic bytes) and size (header) before any pixel is decoded.
    open_image(data, load=False, max_pixels=state.settings.max_input_pixels, formats=state.formats)
    return data


@app.task(name="samework.classify")
def classify(data: bytes) -> dict:
    state = _process()
    classification = classify_bytes(data, state.settings.max_input_pixels, state.formats)
    return {"image": data, "category": classification.category.value}


@app.task(name="samework.upscale")
def upscale(classified: dict, output_url: str) -> bytes:
    # The upscaler worker's `run`: the same checks and calls in the same order, with the task's default options.
    state = _process()
    data = classified["image"]
    open_image(data, load=False, max_pixels=state.settings.max_input_pixels, formats=state.formats)
    picture = codec.decode(data)
    result = state.engine.upscale_picture(picture, Category(classified["category"]), UpscaleOptions())
    return codec.encode(result.picture, output_format(None, output_url))


@app.task(name="samework.upload")
def upload(encoded: bytes, output_url: str) -> dict:
    bucket, key = output_url.removeprefix("s3://").split("/", 1)
    content_type = OUTPUT_FORMATS[output_format(None, output_url)]
    _process().s3.put_object(Bucket=bucket, Key=key, Body=encoded, ContentType=content_type)
    return {"output_url": output_url, "size_bytes": len(encoded)}

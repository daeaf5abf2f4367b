"""Classifier: decode the input once and say what it shows; the category picks the model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from services.classifier.classify import classify
from shared.blobs import read_blob
from shared.config import Settings
from shared.images import DECODABLE_FORMATS, open_image
from shared.job import Handler, Job
from shared.messages import Classification, TaskMessage, input_object
from shared.nats import Topology


def classify_bytes(
    data: bytes, max_pixels: int | None = None, formats: Iterable[str] = DECODABLE_FORMATS
) -> Classification:
    """Classify encoded image bytes; InputError for anything not a decodable image within the limits."""
    return classify(open_image(data, max_pixels=max_pixels, formats=formats))


async def make_handler(topology: Topology, settings: Settings) -> Handler:
    # The fetcher checked format and size already; checked again here, before decoding, so a task
    # fetched under looser settings never makes this process decode a bomb.
    formats, max_pixels = settings.accepted_formats(), settings.max_input_pixels

    async def handle(job: Job) -> TaskMessage:
        data = await read_blob(topology.js, input_object(job.task.task_id))
        classification = await asyncio.to_thread(classify_bytes, data, max_pixels, formats)
        return job.task.model_copy(update={"classification": classification})

    return handle

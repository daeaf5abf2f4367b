"""Classifier: decode the input once and say what it shows; the category picks the model."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable

from PIL import JpegImagePlugin

from services.classifier.classify import classify, draft_size
from shared.blobs import read_image
from shared.config import Settings
from shared.images import DECODABLE_FORMATS, open_image, sniff_format
from shared.messages import Classification, TaskMessage
from shared.nats import Topology
from shared.runtime.errors import InputError
from shared.runtime.job import Job
from shared.runtime.service import StageHandler


def classify_bytes(
    data: bytes, max_pixels: int | None = None, formats: Iterable[str] = DECODABLE_FORMATS
) -> Classification:
    """Classify encoded image bytes; InputError for anything not a decodable image within the limits."""
    if sniff_format(data) != "jpeg":
        return classify(open_image(data, max_pixels=max_pixels, formats=formats))
    open_image(data, load=False, max_pixels=max_pixels, formats=formats)  # format and size, before decoding
    return _classify_jpeg(data)


def _classify_jpeg(data: bytes) -> Classification:
    # The analysis reads a <= 512 px copy, so libjpeg may decode a large JPEG at 1/2, 1/4 or 1/8 scale
    # (draft mode: it drops DCT coefficients instead of computing pixels to throw away). That halves the
    # decode and resize of a 1920x1080 photo and cuts a 12 MP one to a third. The whole entropy-coded
    # stream is still read, so a truncated or corrupt file fails here as it would at full size.
    try:
        image = JpegImagePlugin.jpeg_factory(io.BytesIO(data))  # the plugin open_image used, nothing else
        stored_size = image.size
        image.draft(image.mode, draft_size(stored_size))
        image.load()
    except MemoryError:
        raise  # the machine's state, not the input's: retried
    except Exception as exc:  # Pillow's parsers raise OSError, SyntaxError, struct.error, ... (as open_image)
        raise InputError(f"input image (jpeg) is corrupt or truncated: {exc}") from exc
    return classify(image, stored_size=stored_size)


async def make_handler(topology: Topology, settings: Settings) -> StageHandler:
    # The fetcher checked format and size already; checked again here, before decoding, so a task
    # fetched under looser settings never makes this process decode a bomb.
    formats, max_pixels = settings.accepted_formats(), settings.max_input_pixels

    async def handle(job: Job) -> TaskMessage:
        data = await read_image(topology.js, job.task, "input")
        classification = await asyncio.to_thread(classify_bytes, data, max_pixels, formats)
        return job.task.model_copy(update={"classification": classification})

    return StageHandler(handle)

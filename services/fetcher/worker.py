"""Fetcher: read the input URL, check it is an acceptable image, store it for the next stages."""

from __future__ import annotations

import asyncio

from services.fetcher.sources import read_input
from shared.blobs import pass_on
from shared.config import Settings
from shared.egress.s3 import S3Client
from shared.egress.transport import task_client
from shared.images import open_image
from shared.messages import TaskMessage
from shared.nats import Topology
from shared.runtime.job import Job
from shared.runtime.service import StageHandler

INLINE_CHECK_BYTES = 1024 * 1024


async def make_handler(topology: Topology, settings: Settings) -> StageHandler:
    policy, http = task_client(settings, role="input")
    s3 = S3Client(max_connections=settings.concurrency * 2)

    async def handle(job: Job) -> TaskMessage:
        data = await read_input(
            job.task.input_url,
            http=http,
            policy=policy,
            max_bytes=settings.fetch_max_bytes,
            max_redirects=settings.fetch_max_redirects,
            deadline_s=settings.fetch_timeout_s,
            s3=s3,
            file_root=settings.file_root,
        )
        # Format (by magic bytes) and size (from the header) before any pixel is decoded.
        formats, max_pixels = settings.accepted_formats(), settings.max_input_pixels
        if len(data) <= INLINE_CHECK_BYTES:  # a header read takes less than a hop to a thread and back
            open_image(data, load=False, max_pixels=max_pixels, formats=formats)
        else:  # a large file may have many frames or pages to look through: off the event loop
            await asyncio.to_thread(open_image, data, load=False, max_pixels=max_pixels, formats=formats)
        return job.task.model_copy(
            update=await pass_on(topology, job.task, "input", data, settings.inline_image_max_bytes)
        )

    async def aclose() -> None:
        await http.aclose()
        await s3.close()

    return StageHandler(handle, aclose=aclose)

"""Fetcher: read the input URL, check it is an acceptable image, store it for the next stages."""

from __future__ import annotations

import asyncio

import aioboto3

from services.fetcher.sources import read_input
from shared.blobs import write_blob
from shared.config import Settings
from shared.images import open_image
from shared.job import Handler, Job
from shared.messages import TaskMessage, input_object
from shared.nats import Topology
from shared.transport import task_client


async def make_handler(topology: Topology, settings: Settings) -> Handler:
    policy, http = task_client(settings, role="input")
    s3_session = aioboto3.Session()

    async def handle(job: Job) -> TaskMessage:
        data = await read_input(
            job.task.input_url,
            http=http,
            policy=policy,
            max_bytes=settings.fetch_max_bytes,
            max_redirects=settings.fetch_max_redirects,
            deadline_s=settings.fetch_timeout_s,
            s3_session=s3_session,
            file_root=settings.file_root,
        )
        # Format (by magic bytes) and size (from the header) before any pixel is decoded.
        formats, max_pixels = settings.accepted_formats(), settings.max_input_pixels
        await asyncio.to_thread(open_image, data, load=False, max_pixels=max_pixels, formats=formats)
        await write_blob(topology.blobs, input_object(job.task.task_id), data)
        return job.task

    return handle

"""Fetcher: read the input URL, check it is an image, store it for the next stages."""

from __future__ import annotations

import asyncio

import aioboto3
import httpx

from services.fetcher.sources import read_input
from shared.blobs import write_blob
from shared.config import Settings
from shared.images import open_image
from shared.messages import TaskMessage, input_object
from shared.nats import Topology
from shared.stage import Handler, Job


async def make_handler(topology: Topology, settings: Settings) -> Handler:
    http = httpx.AsyncClient(timeout=httpx.Timeout(settings.fetch_timeout_s), follow_redirects=False)
    s3_session = aioboto3.Session()

    async def handle(job: Job) -> TaskMessage:
        data = await read_input(
            job.task.input_url,
            http=http,
            allow_private=settings.fetch_allow_private_networks,
            max_bytes=settings.fetch_max_bytes,
            s3_session=s3_session,
        )
        await asyncio.to_thread(open_image, data, load=False)
        await write_blob(topology.blobs, input_object(job.task.task_id), data)
        return job.task

    return handle

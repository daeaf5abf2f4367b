"""Fetcher: read the input URL, check it is an acceptable image, store it for the next stages."""

from __future__ import annotations

import asyncio

import aioboto3
import httpx

from services.fetcher.sources import read_input
from shared.blobs import write_blob
from shared.config import Settings
from shared.egress import s3_endpoint
from shared.images import open_image
from shared.messages import TaskMessage, input_object
from shared.nats import Topology
from shared.netguard import AddressPolicy
from shared.stage import Handler, Job
from shared.transport import guarded_client


async def make_handler(topology: Topology, settings: Settings) -> Handler:
    policy = AddressPolicy.from_settings(settings, s3_endpoint=s3_endpoint())
    timeout = httpx.Timeout(settings.fetch_timeout_s, connect=settings.fetch_connect_timeout_s)
    http = guarded_client(policy, role="input", timeout=timeout)
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
        )
        # Format (by magic bytes) and size (from the header) before any pixel is decoded.
        formats, max_pixels = settings.accepted_formats(), settings.max_input_pixels
        await asyncio.to_thread(open_image, data, load=False, max_pixels=max_pixels, formats=formats)
        await write_blob(topology.blobs, input_object(job.task.task_id), data)
        return job.task

    return handle

"""Classifier: decode the input once and say what it shows; the category picks the model."""

from __future__ import annotations

import asyncio

from services.classifier.classify import classify
from shared.blobs import read_blob
from shared.config import Settings
from shared.images import open_image
from shared.messages import Classification, TaskMessage, input_object
from shared.nats import Topology
from shared.stage import Handler, Job


def classify_bytes(data: bytes) -> Classification:
    return classify(open_image(data))


async def make_handler(topology: Topology, settings: Settings) -> Handler:
    async def handle(job: Job) -> TaskMessage:
        data = await read_blob(topology.js, input_object(job.task.task_id))
        classification = await asyncio.to_thread(classify_bytes, data)
        return job.task.model_copy(update={"classification": classification})

    return handle

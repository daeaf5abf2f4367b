"""Uploader: deliver the result to the output URL, then mark the task SUCCESS and clean up."""

from __future__ import annotations

from services.uploader.redelivery import already_delivered
from services.uploader.s3 import write_output
from shared.blobs import discard_task_blobs, read_image
from shared.config import Settings
from shared.egress.failures import s3_endpoint
from shared.egress.s3 import S3Client
from shared.egress.transport import task_client
from shared.images import OUTPUT_FORMATS, output_format
from shared.messages import TaskMessage
from shared.nats import Topology
from shared.runtime.job import Job
from shared.runtime.service import StageHandler
from shared.taskstate.status import TaskStatus


def task_result(task: TaskMessage) -> dict:
    """The reference's `result` plus what users want to know about the output."""
    return {
        "task_id": task.task_id,
        "input_url": task.input_url,
        "output_url": task.output_url,
        "classification": task.classification.model_dump(mode="json") if task.classification else None,
        "output_width": task.output_width,
        "output_height": task.output_height,
        "output_format": output_format(task.options.output_format, task.output_url),
        "model": task.model_used,
    }


async def make_handler(topology: Topology, settings: Settings) -> StageHandler:
    policy, http = task_client(settings, role="output")
    s3 = S3Client(max_connections=settings.concurrency * 2)

    async def handle(job: Job) -> None:
        task = job.task
        data = await read_image(topology.js, task, "output")
        redelivered = job.attempt > 1 and await already_delivered(
            task.output_url,
            data,
            http=http,
            s3=s3,
            s3_endpoint=s3_endpoint(),
            file_root=settings.file_root,
            deadline_s=settings.fetch_timeout_s,
        )
        if not redelivered:  # a worker killed after its upload but before recording SUCCESS
            await write_output(
                task.output_url,
                data,
                OUTPUT_FORMATS[output_format(task.options.output_format, task.output_url)],
                http=http,
                policy=policy,
                s3=s3,
                s3_endpoint=s3_endpoint(),
                deadline_s=settings.fetch_timeout_s,
                file_root=settings.file_root,
            )
        # The runner's store: it remembers the stage's start write, so no read comes before this one.
        await job.store.update(task.task_id, lambda s: record_success(s, task))
        if task.stored_objects:  # images that travelled in the messages left nothing to remove
            await discard_task_blobs(topology.blobs, task.task_id)

    async def aclose() -> None:
        await http.aclose()
        await s3.close()

    return StageHandler(handle, aclose=aclose)


def record_success(status: TaskStatus, task: TaskMessage) -> None:
    status.require_run(task.run)  # ended and started again while this run uploaded: the new run decides
    status.succeed(task_result(task))

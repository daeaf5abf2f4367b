"""The wire's names and the enqueue call, on a real nats-server."""

from __future__ import annotations

import pytest

from shared.messages import Stage, TaskMessage
from shared.nats import Topology
from shared.wire import enqueue as enqueue_message
from shared.wire import (
    message_id,
    parse_work_subject,
    priority_filter,
    task_work_filter,
    work_stream,
    work_subject,
)


def test_a_work_subject_reads_back() -> None:
    subject = work_subject(7, Stage.UPSCALE, "a1b2")
    assert subject == "tm.work.p7.upscale.a1b2"
    assert parse_work_subject(subject) == (7, Stage.UPSCALE, "a1b2")


@pytest.mark.parametrize("subject", ["tm.queued.p7.upscale.a1", "tm.work.7.upscale.a1", "tm.work.p7.paint.a1", ""])
def test_anything_else_is_not_a_work_subject(subject: str) -> None:
    with pytest.raises(ValueError):
        parse_work_subject(subject)


def test_the_message_id_names_task_stage_and_run() -> None:
    assert message_id("a1b2", Stage.FETCH, 3) == "a1b2.fetch.run3"


def message(task_id: str, priority: int = 4) -> TaskMessage:
    return TaskMessage(
        task_id=task_id, priority=priority, input_url="http://x/in.png", output_url="s3://b/o.png", submitted_at="t"
    )


async def test_enqueue_stores_a_run_once_and_a_new_run_again(topology: Topology) -> None:
    stream = work_stream(4)
    before = (await topology.js.stream_info(stream)).state.messages
    for run in (1, 1, 2):  # the second publish of run 1 is a retry: the stream drops it
        await enqueue_message(topology.js, message("wire-task"), Stage.CLASSIFY, run)
    assert (await topology.js.stream_info(stream)).state.messages == before + 2
    raw = await topology.js.get_last_msg(stream, task_work_filter(4, "wire-task"))
    assert raw.subject == work_subject(4, Stage.CLASSIFY, "wire-task")
    assert TaskMessage.unpack(raw.data or b"").task_id == "wire-task"
    info = await topology.js.stream_info(stream)
    assert info.config.subjects == [priority_filter(4)]
    await topology.js.purge_stream(stream, subject=task_work_filter(4, "wire-task"))

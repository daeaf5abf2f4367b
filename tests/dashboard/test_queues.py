"""shared/queues.py against a real nats-server: counts per stream and consumer, and the oldest
waiting age, as messages are queued, taken by a worker and handed back."""

from __future__ import annotations

import pytest

from shared.messages import PIPELINE, PRIORITIES, Stage
from shared.nats import Topology
from shared.queues import ConsumerDepth, QueueSnapshot, format_age, snapshot
from shared.wire import consumer_name, work_filter, work_stream, work_subject


def consumer(found: QueueSnapshot, priority: int, stage: Stage) -> ConsumerDepth:
    return next(c for c in found.consumers if c.priority == priority and c.stage == stage.value)


async def test_empty_queues_list_every_stream_and_consumer(topology: Topology) -> None:
    found = await snapshot(topology.js)
    assert [s.priority for s in found.streams] == sorted(PRIORITIES, reverse=True)
    assert len(found.consumers) == len(PRIORITIES) * len(PIPELINE)
    assert [(c.priority, c.stage) for c in found.consumers[:4]] == [(10, s.value) for s in PIPELINE]
    assert [s.stage for s in found.stages] == [s.value for s in PIPELINE]
    assert all(c.pending == c.ack_pending == c.redelivered == 0 for c in found.consumers)
    assert all(c.oldest_waiting_s is None for c in found.consumers)
    assert all(s.messages == 0 and s.oldest_message_s is None for s in found.streams)


async def test_waiting_held_and_redelivered_messages(topology: Topology) -> None:
    js = topology.js
    for task in ("t1", "t2"):
        await js.publish(work_subject(7, Stage.UPSCALE, task), b"work")
    await js.publish(work_subject(2, Stage.FETCH, "t3"), b"work")

    found = await snapshot(js)
    upscale = consumer(found, 7, Stage.UPSCALE)
    assert (upscale.pending, upscale.ack_pending, upscale.redelivered) == (2, 0, 0)
    assert upscale.oldest_waiting_s is not None and 0 <= upscale.oldest_waiting_s < 10
    assert consumer(found, 7, Stage.FETCH).pending == 0
    assert consumer(found, 2, Stage.FETCH).pending == 1
    stream = next(s for s in found.streams if s.priority == 7)
    assert stream.messages == 2 and stream.size_bytes > 0
    assert stream.oldest_message_s is not None and stream.oldest_message_s >= upscale.oldest_waiting_s
    totals = {s.stage: s for s in found.stages}
    assert (totals["upscale"].pending, totals["fetch"].pending, totals["classify"].pending) == (2, 1, 0)
    assert totals["upscale"].oldest_waiting_s is not None

    # A worker takes the first message and holds it: one waits, one is in progress; the oldest
    # waiting message is now the second one.
    sub = await js.pull_subscribe(
        work_filter(7, Stage.UPSCALE), durable=consumer_name(Stage.UPSCALE), stream=work_stream(7)
    )
    [first] = await sub.fetch(1, timeout=5)
    assert first.subject == work_subject(7, Stage.UPSCALE, "t1")
    held = consumer(await snapshot(js), 7, Stage.UPSCALE)
    assert (held.pending, held.ack_pending) == (1, 1)
    assert held.oldest_waiting_s is not None

    # It takes the second too, hands the first back and gets it again: redelivered.
    await sub.fetch(1, timeout=5)
    await first.nak()
    [again] = await sub.fetch(1, timeout=5)
    assert again.metadata.num_delivered == 2
    back = consumer(await snapshot(js), 7, Stage.UPSCALE)
    assert (back.pending, back.ack_pending, back.redelivered) == (0, 2, 1)
    assert back.oldest_waiting_s is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.25, "250ms"), (12.9, "12s"), (245, "4m05s"), (7980, "2h13m"), (273600, "3d04h")],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text

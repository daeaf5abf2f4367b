"""Taking messages by priority across the per-priority streams, on a real nats-server."""

from __future__ import annotations

import asyncio
import time

from nats.aio.msg import Msg

from shared.messages import Stage
from shared.nats import Topology
from shared.runtime.puller import PriorityPuller
from shared.wire import work_subject


async def publish(topology: Topology, priority: int, task_id: str, stage: Stage = Stage.FETCH) -> None:
    await topology.js.publish(work_subject(priority, stage, task_id), task_id.encode())


async def test_takes_highest_priority_first_then_reports_empty(topology: Topology) -> None:
    for priority, task_id in [(1, "a"), (5, "b"), (9, "c"), (5, "d"), (0, "e")]:
        await publish(topology, priority, task_id)
    await publish(topology, 10, "other-stage", Stage.UPLOAD)
    puller = PriorityPuller(topology.nc, Stage.FETCH)
    await puller.start()
    taken = []
    while (msg := await puller.take()) is not None:
        taken.append(msg.data.decode())
        await msg.ack()
    await puller.close()
    assert taken == ["c", "b", "d", "a", "e"]


async def test_next_wakes_on_a_publish(topology: Topology) -> None:
    puller = PriorityPuller(topology.nc, Stage.CLASSIFY, rescan_s=30)  # only the doorbell can wake it
    await puller.start()
    assert await puller.take() is None
    waiting = asyncio.create_task(puller.next())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await publish(topology, 3, "late", Stage.CLASSIFY)
    msg = await asyncio.wait_for(waiting, timeout=5)
    assert msg is not None and msg.data == b"late"
    await msg.ack()
    await puller.close()


async def test_a_delayed_nak_comes_back_through_the_rescan(topology: Topology) -> None:
    await publish(topology, 6, "again", Stage.UPSCALE)
    puller = PriorityPuller(topology.nc, Stage.UPSCALE, rescan_s=0.2)
    await puller.start()
    first = await puller.take()
    assert first is not None
    await first.nak(delay=0.3)
    again = await asyncio.wait_for(puller.next(), timeout=10)
    assert again is not None and again.data == b"again"
    assert again.metadata.num_delivered == 2
    await again.ack()
    await puller.close()


async def test_close_releases_a_waiting_next(topology: Topology) -> None:
    puller = PriorityPuller(topology.nc, Stage.UPLOAD, rescan_s=30)
    await puller.start()
    waiting = asyncio.create_task(puller.next())
    await asyncio.sleep(0.05)
    await puller.close()
    assert await asyncio.wait_for(waiting, timeout=5) is None


async def test_no_message_waits_for_the_rescan_under_a_stream_of_publishes(topology: Topology, settings) -> None:
    # The doorbell must only ring once a message is stored: were it to ring earlier, an empty answer
    # would mark the priority empty and the message would wait for the (here 30 s) rescan.
    from shared.nats import connect

    puller = PriorityPuller(topology.nc, Stage.FETCH, rescan_s=30)
    await puller.start()
    publisher = await connect(settings, name="publisher")
    taken: list[bytes] = []

    async def take_all() -> None:
        while len(taken) < 60:
            msg = await puller.next()
            assert msg is not None
            taken.append(msg.data)
            await msg.ack()

    consumer = asyncio.create_task(take_all())
    js = publisher.jetstream()
    for n in range(60):
        await js.publish(work_subject(n % 11, Stage.FETCH, f"t{n}"), f"t{n}".encode())
    await asyncio.wait_for(consumer, timeout=10)
    assert sorted(taken) == sorted(f"t{n}".encode() for n in range(60))
    await publisher.close()
    await puller.close()


async def test_a_retry_this_process_gave_back_is_taken_when_its_delay_is_over(topology: Topology) -> None:
    """No rescan needed (30 s here): the puller looks at the priority again when the delay is over."""
    await publish(topology, 4, "later", Stage.UPSCALE)
    puller = PriorityPuller(topology.nc, Stage.UPSCALE, rescan_s=30)
    await puller.start()
    first = await puller.take()
    assert first is not None
    assert await puller.take() is None  # priority 4 is now known empty
    await first.nak(delay=0.3)
    puller.note_retry(4, 0.3)
    again = await asyncio.wait_for(puller.next(), timeout=5)
    assert again is not None and again.data == b"later" and again.metadata.num_delivered == 2
    await again.ack()
    await puller.close()


async def take_until_empty(puller: PriorityPuller) -> list[Msg]:
    held = []
    while (msg := await puller.take()) is not None:
        held.append(msg)
    return held


async def test_what_a_dead_worker_held_comes_back_in_one_rescan(topology: Topology) -> None:
    """Messages that come back together (here naked at once, as expired ack deadlines do) are all taken
    after the rescan that finds the first: `num_pending` does not count them, so it cannot say 'last'."""
    for task_id in ("x", "y", "z"):
        await publish(topology, 7, task_id, Stage.UPSCALE)
    dead = PriorityPuller(topology.nc, Stage.UPSCALE)
    held = await take_until_empty(dead)
    assert len(held) == 3
    puller = PriorityPuller(topology.nc, Stage.UPSCALE, rescan_s=2.0)
    await puller.start()
    assert await puller.take() is None  # every priority is now known empty
    for msg in held:
        await msg.nak()  # back without a ring
    taken, times = [], []
    for _ in range(3):
        msg = await asyncio.wait_for(puller.next(), timeout=10)
        assert msg is not None
        taken.append(msg.data)
        times.append(time.monotonic())
        await msg.ack()
    assert sorted(taken) == [b"x", b"y", b"z"]
    assert times[-1] - times[0] < 1.0, "one rescan per message: the rest waited for the next rescans"
    await puller.close()


async def test_the_rescan_is_not_put_off_by_a_stream_of_rings(topology: Topology) -> None:
    await publish(topology, 2, "quiet", Stage.CLASSIFY)
    dead = PriorityPuller(topology.nc, Stage.CLASSIFY)
    [held] = await take_until_empty(dead)
    puller = PriorityPuller(topology.nc, Stage.CLASSIFY, rescan_s=0.5)
    await puller.start()
    assert await puller.take() is None
    await held.nak()  # back without a ring, while priority 9 rings every 0.1 s
    found = asyncio.Event()

    async def ring_until_found() -> None:
        n = 0
        while not found.is_set():
            await publish(topology, 9, f"busy{n}", Stage.CLASSIFY)
            n += 1
            await asyncio.sleep(0.1)  # the pace of a steady stream of publishes, not a synchronisation

    ringing = asyncio.create_task(ring_until_found())
    async with asyncio.timeout(5):
        while True:
            msg = await puller.next()
            assert msg is not None
            await msg.ack()
            if msg.data == b"quiet":
                break
    found.set()
    await ringing
    await puller.close()

"""The upscaler's priority gate: one holder at a time, highest priority next."""

from __future__ import annotations

import asyncio

from services.upscaler.gate import PriorityGate


async def test_waiters_are_served_by_priority_then_arrival() -> None:
    gate = PriorityGate()
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.hold(0):
            await release.wait()

    async def waiter(name: str, priority: int) -> None:
        async with gate.hold(priority):
            order.append(name)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(waiter(n, p)) for n, p in [("low", 1), ("high-a", 9), ("mid", 5), ("high-b", 9)]]
    await asyncio.sleep(0)
    assert order == []
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *waiters), timeout=5)
    assert order == ["high-a", "high-b", "mid", "low"]


async def test_a_cancelled_waiter_does_not_block_the_gate() -> None:
    gate = PriorityGate()
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.hold(0):
            await release.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(gate.hold(5).__aenter__())
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await first

    async def later() -> str:
        async with gate.hold(1):
            return "ran"

    assert await asyncio.wait_for(later(), timeout=5) == "ran"

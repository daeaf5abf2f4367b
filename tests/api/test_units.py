"""Pure logic of the access layer, with a fake clock: token buckets and key matching."""

from __future__ import annotations

import pytest

from services.api.auth import ApiKeyGuard
from services.api.ratelimit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_says_when_the_next_token_comes() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=2, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)  # refused requests do not push the wait back
    clock.now += 0.25
    assert buckets.take("a") == 0
    assert buckets.take("b") == 0  # another client has its own bucket


def test_a_bucket_refills_up_to_its_burst_only() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=1, burst=2, clock=clock)
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") for _ in range(3)] == [0, 0, pytest.approx(1.0)]


def test_buckets_that_have_refilled_are_forgotten() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=10, burst=5, clock=clock)  # full again 0.5 s after the last use
    for n in range(1000):
        buckets.take(f"client-{n}")
    assert len(buckets) == 1000
    clock.now += 0.4
    buckets.take("client-0")  # used again: kept
    clock.now += 0.2
    buckets.take("late")
    assert len(buckets) == 2  # client-0 and late


def test_the_guard_knows_each_key_by_its_position_only() -> None:
    guard = ApiKeyGuard(["first-key", "second-key"])
    assert guard.match("first-key") == 0
    assert guard.match("second-key") == 1
    for wrong in ("", "first-ke", "first-key ", "FIRST-KEY", "second-key-and-more"):
        assert guard.match(wrong) is None
    with pytest.raises(ValueError):
        ApiKeyGuard([])

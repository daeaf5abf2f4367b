"""Pure logic of the access layer, with a fake clock: token buckets and key matching; reading Last-Event-ID."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from services.api.guards.auth import ApiKeyGuard
from services.api.guards.ratelimit import TokenBuckets
from services.api.tasks.events import resume_after


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


def test_peeking_at_a_bucket_spends_nothing_and_stores_nothing() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=0.5, burst=2, clock=clock)
    assert [buckets.peek("a") for _ in range(5)] == [0] * 5 and len(buckets) == 0
    assert [buckets.take("a"), buckets.take("a")] == [0, 0]
    assert buckets.peek("a") == pytest.approx(2.0) and buckets.peek("a") == pytest.approx(2.0)
    clock.now += 2
    assert buckets.peek("a") == 0 and buckets.take("a") == 0


@pytest.mark.parametrize(
    ("header", "after"), [(None, 0), ("", 0), ("  ", 0), ("7", 7), (" 7\t", 7), ("007", 7), (str(2**64 - 1), 2**64 - 1)]
)
def test_a_resume_point_is_a_stream_sequence(header: str | None, after: int) -> None:
    assert resume_after(header) == after


@pytest.mark.parametrize(
    "header",
    ["0", "-1", "+1", "1_000", "1e3", str(2**64), "9" * 5000, "0" * 5000 + "1" * 21, "\u0661\u0662", "\u00b2",
     "\uff11"],
    ids=["zero", "negative", "plus", "underscore", "exponent", "2**64", "5000 digits", "padded", "arabic-indic",
         "superscript", "fullwidth"],
)  # fmt: skip
def test_anything_else_is_a_400_naming_the_header(header: str) -> None:
    with pytest.raises(HTTPException) as refused:
        resume_after(header)
    assert refused.value.status_code == 400 and refused.value.detail.startswith("Last-Event-ID: ")


def test_the_guard_knows_each_key_by_its_position_only() -> None:
    guard = ApiKeyGuard(["first-key", "second-key"], TokenBuckets(1, 1))
    assert guard.match("first-key") == 0
    assert guard.match("second-key") == 1
    for wrong in ("", "first-ke", "first-key ", "FIRST-KEY", "second-key-and-more"):
        assert guard.match(wrong) is None
    with pytest.raises(ValueError):
        ApiKeyGuard([], TokenBuckets(1, 1))

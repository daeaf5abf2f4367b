"""One webhook delivery against a real local HTTP receiver: headers, signature, what is retried."""

from __future__ import annotations

import httpx

from services.notifier.delivery import H_EVENT_ID, H_SIGNATURE, H_TIMESTAMP, deliver, verify
from shared.netguard import AddressPolicy
from shared.state import TaskState, TaskStatus
from shared.transport import guarded_client
from tests.notifier.receiver import Receiver

SECRET = "s3cret"


def ended() -> TaskStatus:
    status = TaskStatus.new("t-1", kwargs={"callback_url": "http://receiver/hook"})
    status.end(TaskState.REVOKED, "revoked by client")
    return status


def client(allow_private: bool) -> httpx.AsyncClient:
    return guarded_client(AddressPolicy(allow_private=allow_private), role="callback", timeout=httpx.Timeout(5))


async def test_a_signed_post_with_the_event_id() -> None:
    receiver = Receiver()
    try:
        async with client(allow_private=True) as http:
            outcome = await deliver(http, receiver.url("/hook"), ended(), "t-1.1.REVOKED", SECRET)
        got = await receiver.next(5)
    finally:
        receiver.stop()
    assert outcome.delivered and outcome.detail == "HTTP 200"
    assert got.headers[H_EVENT_ID] == got.headers["Idempotency-Key"] == "t-1.1.REVOKED"
    assert verify(SECRET, got.headers[H_TIMESTAMP], got.body, got.headers[H_SIGNATURE])
    assert not verify("other", got.headers[H_TIMESTAMP], got.body, got.headers[H_SIGNATURE])
    assert not verify(SECRET, got.headers[H_TIMESTAMP], got.body, "sha256=\u00e9")  # not ASCII: False, no TypeError
    assert TaskStatus.model_validate_json(got.body).state == TaskState.REVOKED


async def test_what_is_retried_and_what_is_not() -> None:
    receiver = Receiver()
    receiver.answers = {"/busy": {1: 503}, "/rate": {1: 429}, "/refused": {1: 400}, "/moved": {1: 301}}
    try:
        async with client(allow_private=True) as http:
            outcomes = {p: await deliver(http, receiver.url(p), ended(), "e", "") for p in receiver.answers}
        unsigned = await receiver.next(5)
    finally:
        receiver.stop()
    assert {p: (o.delivered, o.retry) for p, o in outcomes.items()} == {
        "/busy": (False, True),
        "/rate": (False, True),
        "/refused": (False, False),
        "/moved": (False, False),
    }
    assert H_SIGNATURE not in unsigned.headers  # no secret, no signature


async def test_the_address_rules_hold_at_delivery_time() -> None:
    receiver = Receiver()
    try:
        async with client(allow_private=False) as http:
            refused = await deliver(http, receiver.url("/hook"), ended(), "e", SECRET)
            unreachable = await deliver(http, "http://localhost.:1/hook", ended(), "e", SECRET)
    finally:
        receiver.stop()
    assert (refused.delivered, refused.retry) == (False, False)
    assert "callback URL host 127.0.0.1 is a loopback address" in refused.detail
    assert receiver.deliveries.empty()
    assert not unreachable.delivered

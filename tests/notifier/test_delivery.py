"""One webhook delivery against a real local HTTP receiver: headers, signature, what is retried."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from services.notifier.delivery import H_EVENT_ID, H_SIGNATURE, H_TIMESTAMP, deliver, verify
from shared.egress.netguard import AddressPolicy
from shared.egress.transport import guarded_client
from shared.taskstate.status import TaskState, TaskStatus
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


@pytest.mark.parametrize(
    ("url", "detail"),
    [("http://127.0.0.256:18500/o.png", "invalid callback URL (Invalid IPv4 address: '127.0.0.256')"),
     ("ftp://127.0.0.1/hook", "invalid callback URL (Request URL has an unsupported protocol 'ftp://'.)")],
)  # fmt: skip
async def test_a_url_httpx_cannot_send_to_fails_at_once(url: str, detail: str) -> None:
    # httpx.InvalidURL is no httpx.HTTPError: it used to escape, so the event was redelivered forever.
    async with client(allow_private=True) as http:
        outcome = await deliver(http, url, ended(), "e", SECRET, deadline_s=5)
    assert (outcome.delivered, outcome.retry, outcome.detail) == (False, False, detail)


async def test_a_receiver_that_never_answers_is_cut_by_the_deadline_and_retried() -> None:
    with socket.socket() as silent:  # listening, never accepting: the request goes out, no answer comes
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        began = time.monotonic()
        async with client(allow_private=True) as http:  # its own timeouts are 5 s
            outcome = await deliver(
                http, f"http://127.0.0.1:{silent.getsockname()[1]}/hook", ended(), "e", "", deadline_s=0.5
            )
    assert (outcome.delivered, outcome.retry) == (False, True)
    assert outcome.detail == "no answer within the 0.5 s limit (TM_WEBHOOK_TIMEOUT_S)"
    assert time.monotonic() - began < 3


async def test_an_unexpected_error_is_retried_not_raised() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug somewhere below")

    async with httpx.AsyncClient(transport=httpx.MockTransport(broken)) as http:
        outcome = await deliver(http, "http://receiver/hook", ended(), "e", "", deadline_s=5)
    assert (outcome.delivered, outcome.retry, outcome.detail) == (False, True, "RuntimeError: a bug somewhere below")

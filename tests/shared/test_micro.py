"""shared/runtime/micro.py on a real nats-server: one instance on the NATS service API, asked by a plain client.

The whole fleet (six kinds of process) is in tests/e2e/test_micro.py; here the rules: names, metadata,
the counters in the stats, the `status` endpoint, and the withdrawal, also with the broker gone.
"""

from __future__ import annotations

import json
import os
import socket
import time

import nats
import pytest
from nats.errors import NoRespondersError

from shared.runtime.micro import DESCRIPTIONS, STOP_TIMEOUT_S, Instance, register, runner_tally, withdraw
from shared.runtime.presence import VERSION
from shared.runtime.stage import StageCounters
from tests.servers import NatsServer


def test_the_tally_counts_answered_messages_and_errors() -> None:
    counters = StageCounters(succeeded=5, failed=1, retried=2, dropped=1, handed_back=3, waited_for_own_run=4)
    tally = runner_tally(lambda: counters, lambda: {"t1", "t2"})

    # handed back (another instance finishes it) and a wait for its own run (counted when answered) are no answers
    assert tally() == {"in_flight": 2, "processed": 9, "errors": 3, "counters": vars(counters)}
    counters.succeeded += 1
    assert tally()["processed"] == 10  # read when asked: nothing is counted per message for the service API


async def test_an_instance_answers_ping_info_stats_and_status_until_withdrawn(own_nats: NatsServer) -> None:
    worker_nc, client = await nats.connect(own_nats.url), await nats.connect(own_nats.url)
    counters, in_flight = StageCounters(), set[str]()
    instance = Instance("fetcher", "fetcher-test-1", stage="fetch", concurrency=4)
    try:
        service = await register(
            worker_nc,
            instance,
            runner_tally(lambda: counters, lambda: in_flight),
            lambda: {"in_flight": sorted(in_flight)},
        )
        metadata = {
            "worker_id": "fetcher-test-1",
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "stage": "fetch",
            "concurrency": "4",
        }

        ping = json.loads((await client.request("$SRV.PING.tm-fetcher", b"", timeout=5)).data)
        assert ping == {
            "type": "io.nats.micro.v1.ping_response",
            "id": service.id,
            "name": "tm-fetcher",
            "version": VERSION,
            "metadata": metadata,
        }

        info = json.loads((await client.request(f"$SRV.INFO.tm-fetcher.{service.id}", b"", timeout=5)).data)
        assert info["description"] == DESCRIPTIONS["fetcher"]
        assert info["metadata"] == metadata
        [endpoint] = info["endpoints"]
        assert (endpoint["name"], endpoint["subject"]) == ("status", f"tm.status.tm-fetcher.{service.id}")

        counters.succeeded, counters.retried, counters.failed = 3, 2, 1
        in_flight.add("task-1")
        stats = json.loads((await client.request("$SRV.STATS", b"", timeout=5)).data)
        assert (stats["id"], stats["name"], stats["version"]) == (service.id, "tm-fetcher", VERSION)
        assert stats["endpoints"][0]["data"] == {
            "stage": "fetch",
            "in_flight": 1,
            "processed": 6,
            "errors": 3,
            "counters": vars(counters),
        }

        status = json.loads((await client.request(endpoint["subject"], b"", timeout=5)).data)
        assert status["worker_id"] == "fetcher-test-1"
        assert (status["service"], status["pid"], status["version"]) == ("fetcher", os.getpid(), VERSION)
        assert status["in_flight"] == ["task-1"]  # built when asked, not the last heartbeat's

        await withdraw(service)
        for subject in ("$SRV.PING.tm-fetcher", f"$SRV.INFO.tm-fetcher.{service.id}", endpoint["subject"]):
            with pytest.raises(NoRespondersError):
                await client.request(subject, b"", timeout=5)
    finally:
        await client.close()
        await worker_nc.close()


async def test_withdrawing_with_the_broker_gone_is_bounded(own_nats: NatsServer) -> None:
    nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1)
    try:
        service = await register(nc, Instance("notifier", "notifier-test-1", stage="notify"), dict, dict)
        own_nats.kill()

        began = time.monotonic()
        await withdraw(service)  # logs and returns: a shutdown must not hang on it

        assert time.monotonic() - began < STOP_TIMEOUT_S + 1.0
    finally:
        await nc.close()

"""How long the system keeps things is its configuration: each setting is the retention of its stream or bucket
on a real server, and a changed setting is taken by the next declaration (docs/operations.md, "Retention")."""

from __future__ import annotations

from shared.config import Settings
from shared.nats import connect, declare
from shared.wire import BLOBS_BUCKET, BLOBS_STREAM, DEAD_STREAM, EVENTS_STREAM
from tests.servers import NatsServer

DAY = 24 * 3600.0


async def retention(settings: Settings) -> dict[str, float | None]:
    nc = await connect(settings, name="test")
    try:
        topology = await declare(nc, settings)
        js = topology.js
        return {
            "events": (await js.stream_info(EVENTS_STREAM)).config.max_age,
            "dead": (await js.stream_info(DEAD_STREAM)).config.max_age,
            "blobs": (await js.stream_info(BLOBS_STREAM)).config.max_age,
            "idempotency": (await topology.idempotency.status()).ttl,
        }
    finally:
        await nc.close()


async def test_the_defaults_are_what_the_docs_say(own_nats: NatsServer) -> None:
    kept = await retention(Settings(nats_url=own_nats.url))
    assert kept == {"events": 7 * DAY, "dead": 30 * DAY, "blobs": DAY, "idempotency": DAY}
    assert Settings(nats_url=own_nats.url).result_ttl_s == 7 * DAY  # enforced by the sweeper (tests/api)


async def test_each_setting_is_its_streams_retention_and_a_change_is_taken(own_nats: NatsServer) -> None:
    first = Settings(nats_url=own_nats.url, events_max_age_s=3600, dead_letters_max_age_s=7200, blobs_max_age_s=600)
    assert await retention(first) == {"events": 3600, "dead": 7200, "blobs": 600, "idempotency": DAY}
    nc = await connect(first, name="test")
    try:
        blobs = (await declare(nc, first)).blobs
        await blobs.put("kept/input", b"an object stored before the change")
    finally:
        await nc.close()
    changed = first.model_copy(update={"events_max_age_s": 1800, "blobs_max_age_s": 900})
    assert (await retention(changed))["events"] == 1800 and (await retention(changed))["blobs"] == 900
    nc = await connect(changed, name="test")
    try:
        store = await nc.jetstream().object_store(BLOBS_BUCKET)
        assert (await store.get("kept/input")).data == b"an object stored before the change"
    finally:
        await nc.close()

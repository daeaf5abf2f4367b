from __future__ import annotations

import pytest

from shared.config import Settings
from shared.nats import Topology, connect, declare
from tests.servers import NatsServer


@pytest.fixture
def settings(own_nats: NatsServer) -> Settings:
    return Settings(nats_url=own_nats.url, ack_wait_s=5, max_retries=2, retry_base_delay_s=0.05, concurrency=1)


@pytest.fixture
async def topology(settings: Settings):
    nc = await connect(settings, name="test")
    yield await declare(nc, settings)
    await nc.close()


__all__ = ["Topology"]

"""Fixtures of the dashboard tests: the JetStream topology on a NATS of the test's own, and a small
real image served over HTTP to submit."""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from shared.config import Settings
from shared.nats import connect, declare
from tests.servers import NatsServer, StaticHTTPServer
from tests.system import System

TASK = "image_super_resolution_pipeline"


@pytest.fixture
async def topology(own_nats: NatsServer):
    settings = Settings(nats_url=own_nats.url, ack_wait_s=30, max_retries=2)
    nc = await connect(settings, name="test")
    yield await declare(nc, settings)
    await nc.close()


def png(size: tuple[int, int] = (24, 16)) -> bytes:
    """A small gradient PNG (a real image the pipeline can classify and upscale)."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def task_body(http_server: StaticHTTPServer, tmp_path) -> dict:
    """A submission whose input is served by the test HTTP server and whose output is a local file."""
    source = http_server.add(f"{uuid.uuid4().hex}.png", png())
    return {"task_name": TASK, "args": [source, (tmp_path / "out.png").as_uri()]}


@pytest.fixture
async def api_alone(own_nats: NatsServer, tmp_path):
    """The API alone on its own NATS: nothing takes a submitted task, so it stays queued."""
    system = System(own_nats.url, tmp_path / "logs", {})
    try:
        await system.start("api")
        yield system
    finally:
        system.stop()


API_KEY = "tm-dashboard-" + "k" * 24


@pytest.fixture
async def secured_api(own_nats: NatsServer, tmp_path):
    """The API alone, with one API key (API_KEY): browsers sign in to the dashboard."""
    system = System(own_nats.url, tmp_path / "logs", {"TM_API_KEYS": API_KEY})
    try:
        await system.start("api")
        yield system
    finally:
        system.stop()

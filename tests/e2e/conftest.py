"""Fixtures for scenarios that need a NATS server of their own (fresh queues, no other workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import system_env
from tests.servers import NatsServer, S3Server
from tests.system import System


@pytest.fixture
def own_system(own_nats: NatsServer, s3_server: S3Server, model_dir: Path, tmp_path: Path, request):
    """A System on its own NATS; a test may pass extra environment with
    @pytest.mark.system_env(TM_QUEUE_TIMEOUT_S="1")."""
    marker = request.node.get_closest_marker("system_env")
    extra = {"TM_CONCURRENCY": "1", **(marker.kwargs if marker else {})}
    system = System(own_nats.url, tmp_path / "logs", system_env(s3_server, model_dir, **extra))
    yield system
    system.stop()

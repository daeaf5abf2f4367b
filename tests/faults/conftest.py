"""The fault suite's system: the API and stages as real processes on the test's own NATS server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import system_env
from tests.faults.harness import FAULT_ENV
from tests.servers import NatsServer, S3Server
from tests.system import System


@pytest.fixture
def make_system(own_nats: NatsServer, s3_server: S3Server, model_dir: Path, tmp_path: Path):
    """make_system(**env) -> a System on the test's own NATS, stopped at teardown."""
    made: list[System] = []

    def make(**env: str) -> System:
        made.append(System(own_nats.url, tmp_path / "logs", system_env(
            s3_server, model_dir, **{**FAULT_ENV, **env})))  # fmt: skip
        return made[-1]

    yield make
    for system in made:
        system.stop()

"""The API alone (no stage services, so submitted tasks stay queued) on a NATS server of its own.

`api_system` starts one per test, with extra environment from
@pytest.mark.system_env(TM_API_KEYS="k1,k2"); `api_only` is the same as a context manager for
module-scoped fixtures that many tests share; `secured` is one with KEY_1 and KEY_2 configured.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.system import System, started_on_own_nats, system_on_own_nats

TASK = "image_super_resolution_pipeline"
SUBMISSION = {"task_name": TASK, "args": ["https://example.com/in.jpg", "s3://bucket/out.png"]}
KEY_1, KEY_2, WRONG = (f"tm-{secrets.token_urlsafe(24)}" for _ in range(3))


@contextmanager
def api_only(directory: Path, **env: str) -> Iterator[System]:
    with system_on_own_nats(directory, env, "api") as system:
        yield system


@pytest.fixture
async def api_system(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[System]:
    marker = request.node.get_closest_marker("system_env")
    async with started_on_own_nats(tmp_path, dict(marker.kwargs) if marker else {}, "api") as system:
        yield system


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """An API with two keys (KEY_1, KEY_2), shared by a module's tests."""
    with api_only(tmp_path_factory.mktemp("secured"), TM_API_KEYS=f"{KEY_1}, {KEY_2}") as system:
        yield system

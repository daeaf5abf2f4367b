"""Session-wide real servers: NATS JetStream, S3 (SeaweedFS) and a static HTTP server.

The machinery lives in tests/servers/; each fixture here starts one server and stops it at the
end of the session, whatever the tests did.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import NatsServer, S3Server, StaticHTTPServer, start_nats, start_s3
from tests.system import STAGE_SERVICES, System


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = start_nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own (fresh queues, no other workers), stopped at teardown."""
    server = start_nats(tmp_path / "nats")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticHTTPServer]:
    with StaticHTTPServer(tmp_path_factory.mktemp("www")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point boto's standard environment variables at the test S3 server for one test."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket with a random name."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model dir holding realesr-animevideov3: the official file from ../shared/models when it
    is there, else a random-weight network of the same architecture (so tests run without it)."""
    directory = tmp_path_factory.mktemp("models")
    official = SHARED_DIR / "models" / "realesr-animevideov3.pth"
    target = directory / "realesr-animevideov3.pth"
    if official.exists():
        shutil.copyfile(official, target)
    else:
        import torch

        from services.upscaler.arch import SRVGGNetCompact

        torch.manual_seed(0)
        net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4, act_type="prelu")
        torch.save({"params": net.state_dict()}, target)
    return directory


def system_env(s3_server: S3Server, model_dir: Path, **extra: str) -> dict[str, str]:
    return {**s3_server.env(), "TM_MODEL_DIR": str(model_dir), **extra}


@pytest.fixture(scope="session")
def system(
    nats_server: NatsServer, s3_server: S3Server, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """The whole system, one process per service, on the session's NATS."""
    running = System(nats_server.url, tmp_path_factory.mktemp("logs"), system_env(s3_server, model_dir))
    try:
        asyncio.run(running.start("api", *STAGE_SERVICES))
        yield running
    finally:
        running.stop()

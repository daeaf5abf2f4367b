"""A whole system with the production network rules, for end-to-end SSRF cases.

The session's `system` allows private networks (its inputs come from a loopback HTTP server), so it
cannot show SSRF refusals. `strict_system` runs on its own NATS with private networks refused, no
TM_FILE_ROOT, and one loopback address, 127.0.0.2, allowlisted: `allowed_server` listens there,
127.0.0.1 stays off limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import system_env
from tests.security.servers import HostileHTTPServer
from tests.servers import S3Server
from tests.system import STAGE_SERVICES, System, system_on_own_nats

STRICT_ENV = {
    "TM_FETCH_ALLOW_PRIVATE_NETWORKS": "false",
    "TM_FILE_ROOT": "",  # the default: file:// off
    "TM_FETCH_ALLOWLIST": "127.0.0.2",
    "TM_FETCH_MAX_BYTES": "300000",
    "TM_FETCH_TIMEOUT_S": "2",
    "TM_FETCH_CONNECT_TIMEOUT_S": "1",
    "TM_INPUT_FORMATS": "png,jpeg,webp,gif,bmp",  # no tiff
}


@pytest.fixture
def allowed_server() -> Iterator[HostileHTTPServer]:
    with HostileHTTPServer(host="127.0.0.2") as server:
        yield server


@pytest.fixture
def strict_system(s3_server: S3Server, model_dir: Path, tmp_path: Path) -> Iterator[System]:
    with system_on_own_nats(tmp_path, system_env(s3_server, model_dir, **STRICT_ENV), "api", *STAGE_SERVICES) as system:
        yield system

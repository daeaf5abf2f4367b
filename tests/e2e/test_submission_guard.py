"""Where private networks are closed, what the fetcher would refuse without a DNS lookup is a 400 at
submission, naming the argument and the rule, and nothing is queued."""

from __future__ import annotations

import httpx
import pytest

from tests.system import System, queued_messages

TASK = "image_super_resolution_pipeline"


@pytest.mark.system_env(TM_FETCH_ALLOW_PRIVATE_NETWORKS="false")
@pytest.mark.parametrize(
    ("args", "field", "words"),
    [
        (["http://169.254.169.254/latest/meta-data", "s3://bucket/o.png"], "args[0]", "link-local"),
        (["http://2130706433/a.png", "s3://bucket/o.png"], "args[0]", "loopback"),
        (["http://[::ffff:10.0.0.1]/a.png", "s3://bucket/o.png"], "args[0]", "private"),
        (["http://localhost/a.png", "s3://bucket/o.png"], "args[0]", "loopback"),
        (["file:///etc/passwd", "s3://bucket/o.png"], "args[0]", "file://"),
        (["https://example.com/a.png", "http://192.168.1.10/put/o.png"], "args[1]", "private"),
    ],
)
async def test_refused_hosts_are_400_and_queue_nothing(own_system: System, args: list, field: str, words: str) -> None:
    await own_system.start("api")
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        response = await api.post("/api/v1/tasks", json={"task_name": TASK, "args": args})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}:") and words in detail
    assert await queued_messages(own_system.nats_url) == 0

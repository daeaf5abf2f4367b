"""Where private networks are closed, what the fetcher would refuse without a DNS lookup is a 400 at
submission, naming the argument and the rule, and nothing is queued; so is a file:// URL outside
TM_FILE_ROOT, or any while it is unset."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.system import FILE_ROOT, System, queued_messages

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


async def details(system: System, bodies: list[list[str]]) -> list[tuple[int, str]]:
    """(status, detail) of each submission, against an API started for them."""
    await system.start("api")
    async with httpx.AsyncClient(base_url=system.api_url) as api:
        answers = [await api.post("/api/v1/tasks", json={"task_name": TASK, "args": args}) for args in bodies]
    return [(a.status_code, a.json().get("detail", "")) for a in answers]


@pytest.mark.system_env(TM_FETCH_ALLOW_PRIVATE_NETWORKS="false")
async def test_disguised_hosts_and_escaping_paths_are_400(own_system: System, tmp_path: Path) -> None:
    (tmp_path / "door").symlink_to("/etc", target_is_directory=True)
    (tmp_path / "in.png").write_bytes(b"not read at submission")
    leaves = f"file:// URL leaves TM_FILE_ROOT ({FILE_ROOT})"
    cases = [
        ("http://127.0.0.1/a.png", "args[0]: input URL host 127.0.0.1 is a loopback address, refused"),
        ("http://127\u30020\u30020\u30021/a.png", "is 127.0.0.1, a loopback address, refused"),
        ("http://127\uff0e0\uff0e0\uff0e1/a.png", "is 127.0.0.1, a loopback address, refused"),
        ("http://\uff11\uff12\uff17.0.0.1/a.png", "is 127.0.0.1, a loopback address, refused"),
        ("http://[::ffff:0:127.0.0.1]/a.png", "an IPv4-translated address of 127.0.0.1, a loopback address"),
        ("http://[fe80::5efe:169.254.169.254]/a.png", "an ISATAP address of 169.254.169.254"),
        ("http://\u2603.example/a.png", "args[0]: invalid input URL host \u2603.example"),
        ("file:///etc/passwd", f"args[0]: input {leaves}: /etc/passwd"),
        (f"file://{FILE_ROOT}/%2e%2e/etc/passwd", f"args[0]: input {leaves}: {FILE_ROOT}/../etc/passwd"),
        (f"file://{tmp_path}/door/passwd", f"args[0]: input {leaves}: {tmp_path}/door/passwd"),
    ]
    outputs = [
        ("http://192\uff0e168\uff0e1\uff0e10/put/o.png", "args[1]: output URL host"),
        ("file:///etc/cron.d/o.png", f"args[1]: output {leaves}: /etc/cron.d/o.png"),
        (f"file://{tmp_path}/door/o.png", f"args[1]: output {leaves}: {tmp_path}/door/o.png"),
    ]
    bodies = [[url, "s3://bucket/o.png"] for url, _ in cases] + [["https://example.com/a.png", u] for u, _ in outputs]
    answers = await details(own_system, bodies)
    for (url, words), (status, detail) in zip(cases + outputs, answers, strict=True):
        assert status == 400 and words in detail, (url, status, detail)
    assert await queued_messages(own_system.nats_url) == 0
    async with httpx.AsyncClient(base_url=own_system.api_url) as api:
        inside = [f"file://{tmp_path}/in.png", f"file://{tmp_path}/new/o.png"]  # under TM_FILE_ROOT
        assert (await api.post("/api/v1/tasks", json={"task_name": TASK, "args": inside})).status_code == 202


@pytest.mark.system_env(TM_FILE_ROOT="", TM_FETCH_ALLOW_PRIVATE_NETWORKS="true")
async def test_file_urls_are_400_without_a_file_root(own_system: System, tmp_path: Path) -> None:
    # Open private networks do not open file://: it has its own setting.
    answers = await details(
        own_system,
        [[f"file://{tmp_path}/in.png", "s3://bucket/o.png"], ["https://example.com/a.png", f"file://{tmp_path}/o.png"]],
    )
    assert answers == [
        (400, f"args[0]: file:// input URLs are not allowed here (TM_FILE_ROOT is not set): {tmp_path}/in.png"),
        (400, f"args[1]: file:// output URLs are not allowed here (TM_FILE_ROOT is not set): {tmp_path}/o.png"),
    ]
    assert await queued_messages(own_system.nats_url) == 0

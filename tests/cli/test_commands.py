"""`task-manager submit | status | queues` run as real subprocesses against a running system."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shared.messages import PIPELINE, PRIORITIES
from tests.api.conftest import api_only
from tests.dashboard.conftest import png
from tests.servers import StaticHTTPServer
from tests.system import ROOT, System

TIMEOUT_S = 180


def cli(*args: str, api_url: str = "", nats_url: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("TM_API_KEY", "TM_API_URL", "NATS_URL")}
    environment |= {"TM_API_URL": api_url, "NATS_URL": nats_url, **env}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip


def readable(run: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a failed command: no traceback, the command named."""
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("task-manager "), run.stderr
    return lines[0]


@pytest.fixture
def image(http_server: StaticHTTPServer) -> str:
    return http_server.add(f"{uuid.uuid4().hex}.png", png())


def test_submit_wait_then_status(system: System, image: str, tmp_path: Path) -> None:
    output = (tmp_path / "out.png").as_uri()
    run = cli("submit", image, output, "--priority", "8", "--wait", api_url=system.api_url)
    assert run.returncode == 0, run.stderr
    final = json.loads(run.stdout)
    assert final["state"] == "SUCCESS" and final["priority"] == 8 and final["progress"] == 1.0
    assert (tmp_path / "out.png").stat().st_size > 0
    progress = run.stderr.strip().splitlines()
    assert progress[-1].endswith("100% SUCCESS") and "[" + "#" * 30 + "]" in progress[-1], run.stderr
    assert all(line.startswith(final["task_id"][:8]) for line in progress)

    status = cli("status", final["task_id"], api_url=system.api_url)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^State\s+SUCCESS \(100%\)$", status.stdout, re.M), status.stdout
    assert re.search(rf"^Task\s+{final['task_id']}$", status.stdout, re.M)
    for stage in PIPELINE:
        assert re.search(rf"^  {stage.value}\s+SUCCESS\s+\S+", status.stdout, re.M), status.stdout
    raw = cli("status", final["task_id"], "--json", api_url=system.api_url)
    assert json.loads(raw.stdout)["state"] == "SUCCESS"


def test_submit_without_wait_prints_the_accepted_task(system: System, image: str, tmp_path: Path) -> None:
    run = cli("submit", image, (tmp_path / "out.png").as_uri(), api_url=system.api_url)
    assert run.returncode == 0, run.stderr
    accepted = json.loads(run.stdout)
    assert set(accepted) == {"task_id", "state", "submitted_at"} and accepted["state"] == "PENDING"


def test_a_failing_task_makes_submit_wait_fail(system: System, http_server: StaticHTTPServer, tmp_path: Path) -> None:
    missing = http_server.url(f"missing-{uuid.uuid4().hex}.png")  # 404: a permanent failure
    run = cli("submit", missing, (tmp_path / "out.png").as_uri(), "--wait", api_url=system.api_url)
    assert run.returncode == 1, run.stderr
    final = json.loads(run.stdout)
    assert final["state"] == "FAILURE" and final["error"]
    assert "FAILURE" in run.stderr.strip().splitlines()[-1]


def test_queues_lists_every_priority_stream_and_stage(system: System) -> None:
    run = cli("queues", nats_url=system.nats_url)
    assert run.returncode == 0, run.stderr
    rows = re.findall(r"^(TM_WORK_P\d+)\s+(\d+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)$", run.stdout, re.M)
    assert {(r[0], int(r[1]), r[2]) for r in rows} == {
        (f"TM_WORK_P{p}", p, s.value) for p in PRIORITIES for s in PIPELINE
    }
    assert len(rows) == len(PRIORITIES) * len(PIPELINE)
    assert run.stdout.splitlines()[0].split() == [
        "STREAM", "PRIO", "STAGE", "WAITING", "IN_PROGRESS", "REDELIVERED", "OLDEST_WAITING",
    ]  # fmt: skip
    for stage in PIPELINE:
        assert re.search(rf"^all\s+{stage.value}\s+\d+\s+\d+\s+\d+\s+\S+$", run.stdout, re.M), run.stdout
    snapshot = json.loads(cli("queues", "--json", nats_url=system.nats_url).stdout)
    assert len(snapshot["consumers"]) == len(PRIORITIES) * len(PIPELINE) and len(snapshot["streams"]) == 11


def test_bad_input_is_a_readable_error(system: System, tmp_path: Path) -> None:
    output = (tmp_path / "out.png").as_uri()
    refused = cli("submit", "ftp://example.com/in.png", output, api_url=system.api_url)
    assert refused.returncode == 2
    assert "400" in readable(refused) and "args[0]" in refused.stderr

    priority = cli("submit", "https://example.com/in.png", output, "--priority", "11", api_url=system.api_url)
    assert priority.returncode == 2 and "priority" in readable(priority)

    unknown = cli("status", str(uuid.uuid4()), api_url=system.api_url)
    assert unknown.returncode == 1 and "not found" in readable(unknown)

    not_a_number = cli("submit", "a", "b", "--priority", "high", api_url=system.api_url)
    assert not_a_number.returncode == 2 and "invalid int value" in not_a_number.stderr
    assert "Traceback" not in not_a_number.stderr


def test_unreachable_api_and_nats_are_readable_errors() -> None:
    api = cli("status", str(uuid.uuid4()), api_url="http://127.0.0.1:9")
    assert api.returncode == 2 and "cannot reach the API at http://127.0.0.1:9" in readable(api)
    bad_url = cli("status", "x", api_url="not a url")
    assert bad_url.returncode == 2 and "the API URL must be http(s)://" in readable(bad_url)
    queues = cli("queues", nats_url="nats://127.0.0.1:9")
    assert queues.returncode == 2 and "cannot read the queues from NATS at nats://127.0.0.1:9" in readable(queues)


def test_api_key_comes_from_the_environment(tmp_path: Path) -> None:
    with api_only(tmp_path, TM_API_KEYS="cli-test-key") as system:
        args = ("submit", "https://example.com/in.png", "s3://bucket/out.png")
        refused = cli(*args, api_url=system.api_url)
        assert refused.returncode == 2 and "set TM_API_KEY" in readable(refused)
        wrong = cli(*args, api_url=system.api_url, TM_API_KEY="wrong")
        assert wrong.returncode == 2 and "check TM_API_KEY" in readable(wrong)
        accepted = cli(*args, api_url=system.api_url, TM_API_KEY="cli-test-key")
        assert accepted.returncode == 0, accepted.stderr
        assert json.loads(accepted.stdout)["state"] == "PENDING"

"""S3 settings that cannot work fail the upload at once, saying what to set (issue #13), against real
SeaweedFS and nats-server; real network failures stay retryable."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.uploader.s3 import write_output
from services.uploader.worker import make_handler
from shared.config import Settings
from shared.egress.netguard import AddressPolicy
from shared.egress.s3 import S3Client
from shared.messages import Stage, TaskMessage
from shared.nats import Topology, connect, declare
from shared.runtime.deadletters import list_dead
from shared.runtime.errors import ConfigurationError, RetryableError
from shared.runtime.stage import StageRunner
from shared.taskstate.status import TaskStatus
from shared.taskstate.store import TaskStore
from shared.wire import work_subject
from tests.servers import NatsServer, S3Server

PNG = b"\x89PNG pretend output"
CREDENTIALS_ADVICE = (
    "S3 credentials are not configured: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
    "and AWS_ENDPOINT_URL_S3 for a non-AWS server"
)


def forget_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A fresh machine: no keys in the environment, no AWS files, no instance or container role to ask."""
    for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def put(url: str, s3: S3Client | None = None) -> None:
    async with httpx.AsyncClient() as http:
        await write_output(
            url, PNG, "image/png", http=http, policy=AddressPolicy(allow_private=True), s3=s3, s3_endpoint=None
        )


# --- the whole stage: the uploader's own handler under the stage runtime, on a real nats-server


@pytest.fixture
def settings(own_nats: NatsServer) -> Settings:
    # Three retries on offer: a failure at the first attempt shows the error was not treated as transient.
    return Settings(nats_url=own_nats.url, ack_wait_s=5, max_retries=3, retry_base_delay_s=0.05, concurrency=1)


@pytest.fixture
async def topology(settings: Settings) -> AsyncIterator[Topology]:
    nc = await connect(settings, name="test")
    yield await declare(nc, settings)
    await nc.close()


async def upload_stage(topology: Topology, settings: Settings, output_url: str) -> tuple[TaskStatus, StageRunner]:
    """Queue one upload, run the real uploader until the task fails (or 20 s pass); the task's state."""
    store = TaskStore.of(topology)
    await store.create(TaskStatus.new("t1", priority=5))
    task = TaskMessage(task_id="t1", input_url="i", output_url=output_url, submitted_at="t", output_image=PNG)
    await topology.js.publish(work_subject(5, Stage.UPLOAD, "t1"), task.pack())
    handler = await make_handler(topology, settings)
    runner = StageRunner(Stage.UPLOAD, handler.handle, topology, settings, "uploader-test")
    running = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(20):
            while not (runner.counters.failed or runner.counters.succeeded):
                await asyncio.sleep(0.02)
    finally:
        runner.stop()
        await asyncio.wait_for(running, timeout=10)
        assert handler.aclose is not None
        await handler.aclose()
    status = await store.get("t1")
    assert status is not None
    return status, runner


async def test_no_s3_credentials_fail_the_task_at_the_first_attempt(
    topology: Topology, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The fresh machine: no S3 settings at all (not even an endpoint), an s3:// output.
    forget_credentials(monkeypatch, tmp_path)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    status, runner = await upload_stage(topology, settings, "s3://bucket/output.png")
    assert status.state == "FAILURE"
    assert status.error == f"output s3://bucket/output.png: {CREDENTIALS_ADVICE}"
    assert status.subtask(Stage.UPLOAD).attempts == 1 and runner.counters.retried == 0
    [dead] = await list_dead(topology.js)
    assert dead.attempts == 1 and dead.error == status.error


async def test_a_wrong_secret_fails_the_task_at_the_first_attempt(
    s3_env: S3Server, s3_bucket: str, topology: Topology, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    status, runner = await upload_stage(topology, settings, f"s3://{s3_bucket}/out.png")
    assert status.state == "FAILURE" and status.error is not None
    assert status.error.startswith(f"output s3://{s3_bucket}/out.png: SignatureDoesNotMatch (")
    assert status.error.endswith("check AWS_SECRET_ACCESS_KEY (it must be the access key's own secret)")
    assert status.subtask(Stage.UPLOAD).attempts == 1 and runner.counters.retried == 0
    assert s3_env.client().list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0


# --- write_output alone, against the real SeaweedFS


async def test_an_unknown_access_key_names_the_bucket_and_the_variable(
    s3_env: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody-knows-me")
    with pytest.raises(ConfigurationError) as caught:
        await put(f"s3://{s3_bucket}/out.png")
    assert str(caught.value).startswith(f"output s3://{s3_bucket}/out.png: InvalidAccessKeyId (")
    assert "check AWS_ACCESS_KEY_ID, and that AWS_ENDPOINT_URL_S3 names the server it belongs to" in str(caught.value)


async def test_half_the_keys_is_said_so(
    s3_env: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    forget_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.access_key)
    with pytest.raises(ConfigurationError, match=r"missing: AWS_SECRET_ACCESS_KEY\)$") as caught:
        await put(f"s3://{s3_bucket}/out.png")
    assert CREDENTIALS_ADVICE in str(caught.value)


async def test_credentials_that_appear_later_are_found_by_the_kept_client(
    s3_env: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A process's client made without credentials would fail every upload until a restart.
    kept = S3Client()
    try:
        forget_credentials(monkeypatch, tmp_path)
        with pytest.raises(ConfigurationError, match="S3 credentials are not configured"):
            await put(f"s3://{s3_bucket}/late.png", kept)
        (tmp_path / "no-aws-credentials").write_text(
            f"[default]\naws_access_key_id = {s3_env.access_key}\naws_secret_access_key = {s3_env.secret_key}\n"
        )  # e.g. a secret mounted after the worker started
        await put(f"s3://{s3_bucket}/late.png", kept)
        assert s3_env.client().get_object(Bucket=s3_bucket, Key="late.png")["Body"].read() == PNG
    finally:
        await kept.close()


async def test_an_unknown_profile_fails_the_upload_not_the_worker(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    forget_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_PROFILE", "nope")
    kept = S3Client()  # what a worker makes at start-up: S3 settings are read on first use only
    try:
        with pytest.raises(
            ConfigurationError, match=r"The config profile \(nope\) could not be found\): check AWS_PROFILE"
        ):
            await put("s3://some-bucket/out.png", kept)
    finally:
        await kept.close()


@pytest.mark.parametrize("endpoint", ["localhost:8333", "ftp://seaweedfs:8333", "http://seaweedfs:99999"])
async def test_a_malformed_endpoint_fails_at_once(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    with pytest.raises(ConfigurationError, match=r"\(AWS_ENDPOINT_URL_S3\) is malformed: .*such as http://"):
        await put("s3://some-bucket/out.png")


async def test_a_malformed_endpoint_in_the_aws_config_file_fails_at_once(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    (tmp_path / "config").write_text("[default]\nendpoint_url = localhost:8333\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    with pytest.raises(
        ConfigurationError, match=r"\(Invalid endpoint: localhost:8333\): check endpoint_url in the AWS"
    ):
        await put("s3://some-bucket/out.png")


async def test_a_refused_connection_stays_retryable(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed.getsockname()[1]}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries would only slow the test
        with pytest.raises(RetryableError, match="EndpointConnectionError"):
            await put("s3://some-bucket/out.png")

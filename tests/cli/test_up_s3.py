"""`task-manager up` with no S3 configured: an embedded SeaweedFS under the data dir takes s3:// outputs."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest

from services.cli.s3local import configured_elsewhere
from tests.cli.test_commands import cli
from tests.cli.test_up import api_healthy, start_up, stop_up, up_env, wait_for
from tests.dashboard.conftest import png
from tests.servers import StaticHTTPServer
from tests.servers.s3 import _free_http_ports
from tests.upscaler.mirror import ReleaseMirror


def test_any_s3_setting_turns_the_embedded_s3_off(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "no-credentials")
    assert not configured_elsewhere({"AWS_SHARED_CREDENTIALS_FILE": nowhere, "AWS_DEFAULT_REGION": "eu-west-1"})
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE"):
        assert configured_elsewhere({"AWS_SHARED_CREDENTIALS_FILE": nowhere, name: "x"}), name
    (tmp_path / "credentials").write_text("[default]\n")
    assert configured_elsewhere({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials")})


def _read_env_file(path: Path) -> dict[str, str]:
    pairs = (shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in path.read_text().splitlines())
    return dict(pairs)


async def test_up_without_s3_settings_embeds_one_that_takes_s3_outputs(
    tmp_path: Path, model_dir: Path, mirror: ReleaseMirror, http_server: StaticHTTPServer
) -> None:
    env = up_env(model_dir, mirror, AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"))
    for name in (
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
    ):
        env.pop(name, None)
    (s3_port,) = _free_http_ports(1)  # SeaweedFS needs port + 10000 free too
    process, api_url, _, log_path = start_up(tmp_path, env, "--s3-port", str(s3_port))
    try:
        try:
            await wait_for(lambda: api_healthy(api_url), 120, "API healthy")
        except TimeoutError:
            pytest.fail("system did not come up:\n" + log_path.read_text()[-4000:])
        # One line says where the S3 listens and how to read it; the keys are in DATA_DIR/s3/env.
        s3_lines = [json.loads(line) for line in log_path.read_text().splitlines() if '"event": "s3"' in line]
        assert len(s3_lines) == 1 and s3_lines[0]["embedded"] is True, s3_lines
        endpoint = f"http://127.0.0.1:{s3_port}"
        env_file = tmp_path / "data" / "s3" / "env"
        assert s3_lines[0]["endpoint"] == endpoint
        assert s3_lines[0]["read_with"] == f". {env_file} && aws --endpoint-url {endpoint} s3 ls"
        s3_env = _read_env_file(env_file)
        assert s3_env["AWS_ENDPOINT_URL_S3"] == endpoint and env_file.stat().st_mode & 0o077 == 0

        # A task names a bucket nobody made: it is made on the first upload, and the object is readable.
        image = http_server.add(f"{uuid.uuid4().hex}.png", png())
        bucket = f"out-{uuid.uuid4().hex[:12]}"
        run = cli("submit", image, f"s3://{bucket}/output.png", "--wait", api_url=api_url)
        assert run.returncode == 0, run.stderr + log_path.read_text()[-4000:]
        assert json.loads(run.stdout)["state"] == "SUCCESS"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
            region_name=s3_env["AWS_DEFAULT_REGION"],
        )
        body = client.get_object(Bucket=bucket, Key="output.png")["Body"].read()
        assert body.startswith(b"\x89PNG")

        # SIGTERM stops the S3 server with the rest.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
        leftover = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert leftover == []
    finally:
        stop_up(process)

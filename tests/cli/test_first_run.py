"""A newcomer's first run: `task-manager up` on a fresh data dir with no weights and no S3 configured, then
README's first example (its `curl -X POST` body, an `s3://` output) as written, the placeholder input URL
replaced by a real photo. The weights come from a local mirror (TM_MODEL_MIRROR) holding the one official
file there is offline, realesr-animevideov3, and the object is read back from the embedded S3."""

from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import uuid
from pathlib import Path

import boto3
import httpx
import pytest
from PIL import Image

from services.cli import s3local
from shared import modelfiles
from shared.contracts import catalog
from tests.cli.test_up import api_healthy, start_up, stop_up, up_env, wait_for
from tests.cli.test_up_s3 import _read_env_file
from tests.servers import StaticHTTPServer
from tests.servers.s3 import _free_http_ports
from tests.system import ROOT, wait_terminal
from tests.upscaler.conftest import ANIMEVIDEO, IMAGES, shared_file
from tests.upscaler.mirror import ReleaseMirror

ANIME = "realesr-animevideov3"
# The first `curl -X POST .../api/v1/tasks` in README.md and its JSON body.
FIRST_SUBMIT = re.compile(r"curl -X POST \S+/api/v1/tasks\b[^']*-d '(\{.*?\})'", re.S)


def readme_first_task() -> dict:
    """The task README's first example submits, read from README.md so the test follows it."""
    match = FIRST_SUBMIT.search((ROOT / "README.md").read_text())
    assert match, "README's first example no longer POSTs a task with curl: make this test run the new one"
    return json.loads(match.group(1))


async def test_readme_first_example_on_a_fresh_machine(
    tmp_path: Path, mirror: ReleaseMirror, http_server: StaticHTTPServer
) -> None:
    weights = shared_file(ANIMEVIDEO).read_bytes()
    photo = shared_file(IMAGES / "0014.jpg").read_bytes()  # 179x179: well under a second of CPU inference
    mirror.add(ANIME, weights)  # the only official file the mirror has; the routed models answer 404
    model_dir = tmp_path / "models"  # absent, as ~/.cache/task-manager/models is on a fresh machine
    env = up_env(model_dir, mirror, AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"))
    for name in (*s3local.S3_SETTINGS, "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "TM_MODEL_WAIT_S"):
        env.pop(name, None)
    (s3_port,) = _free_http_ports(1)  # SeaweedFS needs port + 10000 free too
    process, api_url, nats_url, log_path = start_up(tmp_path, env, "--s3-port", str(s3_port))
    try:
        try:
            await wait_for(lambda: api_healthy(api_url), 120, "API healthy")
        except TimeoutError:
            pytest.fail("system did not come up:\n" + log_path.read_text()[-4000:])

        # README's example as written; only its placeholder input becomes a real photo.
        task = readme_first_task()
        placeholder, output_url = task["args"]
        assert output_url.startswith("s3://") and placeholder.startswith("https://example.com/"), task["args"]
        task["args"] = [http_server.add(f"{uuid.uuid4().hex}.jpg", photo), output_url]
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
            accepted = await client.post("/api/v1/tasks", json=task)
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]
            await wait_terminal(nats_url, [task_id], timeout_s=180)
            final = (await client.get(f"/api/v1/tasks/{task_id}")).json()  # README's second command
        assert final["state"] == "SUCCESS", json.dumps(final, indent=1) + log_path.read_text()[-4000:]

        # A Real-ESRGAN network ran on the weights `up` fetched from the mirror: the model README names (routed,
        # the stand-in the engine names), not a Lanczos resize.
        asked = task["kwargs"].get("model")
        ran = final["result"]["model"]
        assert ran == (asked or f"{ANIME} ({catalog.ROUTES[final['classification']['category']]} not installed)")
        assert ran.split()[0] in catalog.MODELS and "lanczos" not in ran and "fallback" not in ran
        installed = modelfiles.weight_path(ANIME, model_dir)
        assert hashlib.sha256(installed.read_bytes()).hexdigest() == catalog.get(ANIME).sha256

        # The object is in the embedded S3, readable with the keys `up` keeps, and is the photo upscaled.
        s3_env = _read_env_file(tmp_path / "data" / "s3" / "env")
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"],
            aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
            region_name=s3_env["AWS_DEFAULT_REGION"],
        )
        bucket, key = output_url.removeprefix("s3://").split("/", 1)
        with Image.open(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as out:
            out.load()
        outscale = task["kwargs"].get("outscale", 4)
        with Image.open(io.BytesIO(photo)) as source:
            expected = (round(source.width * outscale), round(source.height * outscale))
        assert (out.format, out.size) == ("PNG", expected)
        assert (final["result"]["output_width"], final["result"]["output_height"]) == expected

        process.send_signal(signal.SIGTERM)  # a clean stop: SeaweedFS's sockets in /tmp go with it
        assert process.wait(timeout=90) == 0
    finally:
        stop_up(process)

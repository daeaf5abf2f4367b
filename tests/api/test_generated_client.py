"""Clients generated from the live OpenAPI document by the common generators, used as their users use them.

openapi-python-client (the `test` extra) generates a package from GET /openapi.json of the running system;
the test imports it and submits, follows and reads a real task through it, with typed models all the way
down to the result's fields. A schema the generator cannot read is skipped with a warning (its model
missing), so any warning fails the test. The generator's post hooks (ruff formatting the generated code)
are off: they need `ruff` on PATH, else they warn, and the code is what is checked here, not its format.

openapi-typescript is npm's: it is installed into a temp folder when npm and its registry answer (else
the test is skipped), and the TypeScript compiler checks a file that uses its types.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from tests.api.conftest import KEY_1, SUBMISSION
from tests.e2e.images import photo, size_of
from tests.servers import S3Server, StaticHTTPServer
from tests.system import System, wait_terminal

PACKAGE = "tm_generated_client"
TASK_OPERATIONS = {"submit_task", "get_task", "list_tasks", "revoke_task", "retry_task", "cleanup_task", "task_events"}


def generate(document_url: str, folder: Path) -> float:
    """Generate the client package into `folder`/PACKAGE; the seconds it took."""
    config = folder / "generator.yaml"
    config.write_text("post_hooks: []\n")
    command = [
        sys.executable, "-m", "openapi_python_client", "generate", "--url", document_url,
        "--meta", "none", "--output-path", str(folder / PACKAGE), "--config", str(config),
    ]  # fmt: skip
    began = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - began
    said = run.stdout + run.stderr
    assert run.returncode == 0, said
    assert "Warning" not in said and "Error" not in said, said
    return took


@contextmanager
def imported(folder: Path) -> Iterator[ModuleType]:
    """The generated package, importable while the block runs (its models import each other lazily, so the
    checks on them run inside it too), forgotten after it."""
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


async def test_a_generated_python_client_runs_a_task_with_typed_results(
    system: System, http_server: StaticHTTPServer, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    took = generate(f"{system.api_url}/openapi.json", tmp_path)
    print(f"openapi-python-client generated the client in {took:.2f}s")
    with imported(tmp_path) as client_package:
        from tm_generated_client.api.tasks import get_task, submit_task
        from tm_generated_client.models import (
            Category,
            Classification,
            ErrorResponse,
            Stage,
            SubmitTaskRequest,
            SubmitTaskRequestKwargs,
            SubmitTaskRequestKwargsModelType0,
            SubmitTaskRequestTaskName,
            SubmitTaskResponse,
            Subtask,
            TaskResult,
            TaskState,
            TaskStatus,
        )

        source = http_server.add(f"{uuid.uuid4().hex}.png", photo("chelsea.png", (48, 32)))
        key = f"generated/{uuid.uuid4().hex}.png"
        body = SubmitTaskRequest(
            task_name=SubmitTaskRequestTaskName.IMAGE_SUPER_RESOLUTION_PIPELINE,
            args=[source, f"s3://{s3_bucket}/{key}"],
            kwargs=SubmitTaskRequestKwargs(model=SubmitTaskRequestKwargsModelType0.REALESR_ANIMEVIDEOV3),
            priority=7,
        )
        async with client_package.Client(base_url=system.api_url, raise_on_unexpected_status=True) as client:
            refused = await submit_task.asyncio(
                client=client, body=SubmitTaskRequest(task_name=body.task_name, args=[source])
            )
            # One URL: below the document's minItems, and the API's readable 400, parsed by the client too
            assert isinstance(refused, ErrorResponse)
            assert refused.detail.startswith("args: expected")

            accepted = await submit_task.asyncio(client=client, body=body)
            assert isinstance(accepted, SubmitTaskResponse), accepted
            await wait_terminal(system.nats_url, [accepted.task_id], timeout_s=120)
            status = await get_task.asyncio(task_id=accepted.task_id, client=client)

        assert isinstance(status, TaskStatus), status
        assert status.state is TaskState.SUCCESS, status.error
        assert status.error is None and status.progress == 1.0 and status.priority == 7
        assert all(isinstance(subtask, Subtask) and subtask.state is TaskState.SUCCESS for subtask in status.subtasks)
        assert all(isinstance(subtask.name, Stage) for subtask in status.subtasks)
        assert [subtask.name.value for subtask in status.subtasks] == ["fetch", "classify", "upscale", "upload"]
        result = status.result
        assert isinstance(result, TaskResult)
        assert (result.task_id, result.input_url, result.output_url) == (accepted.task_id, source, body.args[1])
        written = size_of(s3_object(s3_server, s3_bucket, key))
        assert (result.output_width, result.output_height) == (192, 128) == written
        assert (result.output_format, result.model) == ("png", "realesr-animevideov3")
        assert isinstance(result.classification, Classification)
        assert isinstance(result.classification.category, Category)
        assert (result.classification.width, result.classification.height) == (48, 32)
        # Every field the API returned is one the document describes (else it lands in additional_properties).
        assert result.additional_properties == {} and status.additional_properties == {}
        assert result.classification.additional_properties == {}
        # ... where a field a later version adds reaches this client, instead of breaking it.
        later = TaskResult.from_dict({**result.to_dict(), "added_later": 1})
        assert later.additional_properties == {"added_later": 1} and later.output_width == 192
        operations = {module.stem for module in (tmp_path / PACKAGE / "api" / "tasks").glob("[!_]*.py")}
        assert operations == TASK_OPERATIONS  # named as the routes' functions, not submit_task_api_v1_tasks_post


async def test_with_api_keys_the_generated_client_authenticates_with_a_token(secured: System, tmp_path: Path) -> None:
    generate(f"{secured.api_url}/openapi.json", tmp_path)
    with imported(tmp_path) as client_package:
        from tm_generated_client.api.tasks import get_task, submit_task
        from tm_generated_client.models import (
            ErrorResponse,
            SubmitTaskRequest,
            SubmitTaskResponse,
            TaskState,
            TaskStatus,
        )

        body = SubmitTaskRequest.from_dict(SUBMISSION)
        async with client_package.AuthenticatedClient(base_url=secured.api_url, token=KEY_1) as client:
            accepted = await submit_task.asyncio(client=client, body=body)
            assert isinstance(accepted, SubmitTaskResponse), accepted
            status = await get_task.asyncio(task_id=accepted.task_id, client=client)
        async with client_package.Client(base_url=secured.api_url) as anonymous:
            refused = await get_task.asyncio(task_id=accepted.task_id, client=anonymous)
        # No stage services here: the task waits in its queue, with no result yet.
        assert isinstance(status, TaskStatus) and status.state is TaskState.PENDING and status.result is None
        assert isinstance(refused, ErrorResponse) and refused.detail


def s3_object(s3: S3Server, bucket: str, key: str) -> bytes:
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


USES_THE_TYPES = """
import type { components } from "./schema";

type Status = components["schemas"]["TaskStatus"];
type Args = components["schemas"]["SubmitTaskRequest"]["args"];

export function describe(status: Status): string {
  const result = status.result;
  if (!result) return status.state ?? "PENDING";
  const size: number = (result.output_width ?? 0) * (result.output_height ?? 0);
  return `${result.model} made ${size} pixels of ${result.output_format}: ${result.classification?.category}`;
}
export const pair: Args = ["https://example.com/in.png", "s3://bucket/out.png"];
// @ts-expect-error: args are exactly two URLs
export const three: Args = ["https://example.com/in.png", "s3://bucket/out.png", "s3://bucket/more.png"];
"""


def test_openapi_typescript_takes_the_live_document(system: System, tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(reason="npm is not installed")
    install = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(tmp_path), "openapi-typescript@7"]
    try:
        installed = subprocess.run(install, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.skip(reason="npm could not install openapi-typescript in 90 s (no registry?)")
    if installed.returncode != 0:
        pytest.skip(reason=f"npm could not install openapi-typescript: {installed.stderr[-500:]}")
    tools = tmp_path / "node_modules" / ".bin"
    generated = subprocess.run(
        [str(tools / "openapi-typescript"), f"{system.api_url}/openapi.json", "-o", str(tmp_path / "schema.d.ts")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    (tmp_path / "check.ts").write_text(USES_THE_TYPES)
    compiled = subprocess.run(
        [str(tools / "tsc"), "--noEmit", "--strict", "--target", "es2020", str(tmp_path / "check.ts")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr

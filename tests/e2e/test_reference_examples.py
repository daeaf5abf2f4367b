"""The API reference's own examples, run unchanged (but for the host) against the running system."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest

from tests.system import System, wait_terminal

CURL_SUBMIT_BODY = """{
    "task_name": "image_super_resolution_pipeline",
    "args": [
      "https://example.com/input.jpg",
      "https://s3.amazonaws.com/bucket/output.jpg"
    ]
  }"""


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_submit_status_and_cleanup(system: System) -> None:
    submitted = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"{system.api_url}/api/v1/tasks",
         "-H", "Content-Type: application/json", "-d", CURL_SUBMIT_BODY],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    accepted = json.loads(submitted.stdout)
    assert set(accepted) == {"task_id", "state", "submitted_at"}
    assert accepted["state"] == "PENDING"
    assert accepted["submitted_at"].endswith("Z")
    task_id = accepted["task_id"]

    status = json.loads(
        subprocess.run(
            ["curl", "-sS", f"{system.api_url}/api/v1/tasks/{task_id}"], capture_output=True, check=True, timeout=30
        ).stdout
    )
    assert status["task_id"] == task_id
    for field in ("state", "progress", "result", "error", "submitted_at", "started_at", "completed_at", "subtasks"):
        assert field in status

    # example.com cannot be reached from here: the task must end FAILURE with a readable error.
    final = (await wait_terminal(system.nats_url, [task_id], timeout_s=90))[task_id]
    assert final["state"] == "FAILURE"
    assert "example.com" in final["error"]

    cleaned = subprocess.run(
        ["curl", "-sS", "-X", "DELETE", f"{system.api_url}/api/v1/tasks/{task_id}"],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    assert json.loads(cleaned.stdout) == {"status": "success", "message": f"Task {task_id} cleaned up"}


async def test_python_example_and_polling(system: System) -> None:
    # The reference's Python example, with only the base URL changed.
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{system.api_url}/api/v1/tasks",
            json={
                "task_name": "image_super_resolution_pipeline",
                "args": ["https://example.com/input.jpg", "https://s3.amazonaws.com/bucket/output.jpg"],
                "sync": False,
            },
        )
        result = response.json()
        task_id = result["task_id"]
    assert response.status_code == 202

    # The reference's polling loop, bounded by a timeout here.
    async def wait_for_task(task_id: str):
        import asyncio

        async with httpx.AsyncClient() as client:
            while True:
                response = await client.get(f"{system.api_url}/api/v1/tasks/{task_id}")
                status = response.json()
                if status["state"] in ["SUCCESS", "FAILURE", "TIMEOUT"]:
                    return status
                await asyncio.sleep(0.2)

    import asyncio

    status = await asyncio.wait_for(wait_for_task(task_id), timeout=90)
    assert status["state"] == "FAILURE"
    assert status["completed_at"] is not None

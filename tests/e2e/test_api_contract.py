"""Status codes and bodies of the reference's endpoints, including every documented error."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.system import System

TASK = "image_super_resolution_pipeline"
GOOD_ARGS = ["https://example.com/in.jpg", "s3://bucket/out.png"]


@pytest.fixture
async def api(system: System):
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task_name": "no_such_task", "args": GOOD_ARGS}, "task_name"),
        ({"args": GOOD_ARGS}, "task_name"),
        ({"task_name": TASK}, "args"),
        ({"task_name": TASK, "args": GOOD_ARGS[:1]}, "args"),
        ({"task_name": TASK, "args": [42, "s3://bucket/out.png"]}, "args[0]"),
        ({"task_name": TASK, "args": ["ftp://host/in.jpg", "s3://bucket/out.png"]}, "args[0]"),
        ({"task_name": TASK, "args": ["http://[B:/in.jpg", "s3://bucket/out.png"]}, "args[0]"),
        ({"task_name": TASK, "args": ["http://[F5f9f41AA9]/in.jpg", "s3://bucket/out.png"]}, "args[0]"),
        ({"task_name": TASK, "args": ["https://example.com/in.jpg", "http://[zz]/out.png"]}, "args[1]"),
        ({"task_name": TASK, "args": ["https://example.com/in.jpg", "gopher://x/out.png"]}, "args[1]"),
        ({"task_name": TASK, "args": ["https://example.com/in.jpg", "s3://bucket/out.tiff"]}, "args[1]"),
        ({"task_name": TASK, "args": GOOD_ARGS, "priority": 11}, "priority"),
        ({"task_name": TASK, "args": GOOD_ARGS, "priority": -1}, "priority"),
        ({"task_name": TASK, "args": GOOD_ARGS, "priority": "5"}, "priority"),
        ({"task_name": TASK, "args": GOOD_ARGS, "priority": 5.5}, "priority"),
        ({"task_name": TASK, "args": GOOD_ARGS, "priority": True}, "priority"),
        ({"task_name": TASK, "args": GOOD_ARGS, "sync": "yes"}, "sync"),
        ({"task_name": TASK, "args": GOOD_ARGS, "kwargs": {"model": "NoSuchModel"}}, "kwargs.model"),
        ({"task_name": TASK, "args": GOOD_ARGS, "kwargs": {"outscale": 100}}, "kwargs.outscale"),
        ({"task_name": TASK, "args": GOOD_ARGS, "kwargs": {"tile": 5}}, "kwargs.tile"),
        ({"task_name": TASK, "args": GOOD_ARGS, "kwargs": {"colour": "red"}}, "kwargs.colour"),
        ({"task_name": TASK, "args": GOOD_ARGS, "priorty": 9}, "priorty"),
    ],
)
async def test_invalid_submissions_are_400_naming_the_field(api: httpx.AsyncClient, body: dict, field: str) -> None:
    response = await api.post("/api/v1/tasks", json=body)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert field in detail


async def test_malformed_json_is_400(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/tasks", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["detail"]


@pytest.mark.parametrize("task_id", [str(uuid.uuid4()), "not-a-uuid"])
async def test_unknown_task_is_404(api: httpx.AsyncClient, task_id: str) -> None:
    for response in (await api.get(f"/api/v1/tasks/{task_id}"), await api.delete(f"/api/v1/tasks/{task_id}")):
        assert response.status_code == 404
        assert task_id in response.json()["detail"]


async def test_health(api: httpx.AsyncClient) -> None:
    response = await api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy", "service": "task-manager-api", "version": "0.1.0"}


async def test_dashboard_shows_live_workers_and_queues(api: httpx.AsyncClient, system: System) -> None:
    stages = [system.processes[s].pid for s in ("fetcher", "classifier", "upscaler", "uploader")]
    await system.wait_heartbeats(set(stages), timeout_s=15)
    response = await api.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for section in ("Worker pool", "GPU configuration", "Queues", "API endpoints"):
        assert section in page
    for service in ("fetcher", "classifier", "upscaler", "uploader"):
        assert f"<td>{service}</td>" in page
        assert str(system.processes[service].pid) in page
    assert "/api/v1/tasks/{task_id}" in page
    assert "<td>fp32</td>" in page or "<td>fp16</td>" in page  # the upscaler reports its precision


async def test_metrics_use_the_reference_names(api: httpx.AsyncClient) -> None:
    response = await api.get("/dashboard/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for line in (
        "# TYPE tasks_submitted_total counter",
        "# TYPE tasks_completed_total counter",
        "# TYPE task_duration_seconds histogram",
    ):
        assert line in response.text


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
async def test_interactive_docs(api: httpx.AsyncClient, path: str) -> None:
    assert (await api.get(path)).status_code == 200


async def test_openapi_documents_every_error_with_a_detail(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    documented = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            documented[f"{method.upper()} {path}"] = codes
            assert "422" not in codes  # invalid requests are 400 here
            for code in codes - {"200", "202"}:
                if path != "/health":
                    assert operation["responses"][code]["content"]["application/json"]["schema"] == error_ref
    assert documented["POST /api/v1/tasks"] >= {"400", "409", "413", "429", "503"}
    assert documented["GET /api/v1/tasks/{task_id}"] >= {"404", "429", "503"}
    assert documented["POST /api/v1/tasks/{task_id}/revoke"] >= {"404", "409", "429", "503"}
    assert "ValidationError" not in schema["components"]["schemas"]


async def test_method_not_allowed_names_every_method_of_the_path(api: httpx.AsyncClient) -> None:
    response = await api.put(f"/api/v1/tasks/{uuid.uuid4()}")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD"  # GET and DELETE live in different routers; HEAD: GET's


async def test_kwargs_of_the_wrong_type_are_400(api: httpx.AsyncClient) -> None:
    for kwargs, field in (({"outscale": "2"}, "kwargs.outscale"), ({"tile_pad": True}, "kwargs.tile_pad")):
        response = await api.post("/api/v1/tasks", json={"task_name": TASK, "args": GOOD_ARGS, "kwargs": kwargs})
        assert response.status_code == 400, response.text
        assert field in response.json()["detail"]

"""Request and response bodies of the REST API (the shapes of ../API-REFERENCE.md)."""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from pydantic.config import JsonDict

from services.api.tasks.accepted import ARGS, CALLBACK_PATTERN, KWARGS, OUTPUT_FORMAT_RULE
from shared.messages import TASK_NAME, Classification, WholeNumber
from shared.taskstate import status as stored


def _document_submission(schema: JsonDict) -> None:
    schema["examples"] = [
        {
            "task_name": TASK_NAME,
            "args": ["https://example.com/input.jpg", "https://s3.amazonaws.com/bucket/output.jpg"],
            "kwargs": {},
            "priority": 5,
            "sync": False,
        }
    ]
    # The reference lists args as optional (its task API is generic); the one task needs both URLs, and a
    # request without them is a 400 naming `args`, so the document says so.
    schema["required"] = [*schema.get("required", []), "args"]  # type: ignore[misc]
    schema.update(OUTPUT_FORMAT_RULE)


class SubmitTaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_document_submission)

    task_name: str = Field(description="Name of the task to execute", json_schema_extra={"enum": [TASK_NAME]})
    args: list[Any] = Field(default_factory=list, description="[input_url, output_url]", json_schema_extra=ARGS)
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Optional: model, outscale or target_width/target_height with fit, tile, tile_pad, pre_pad, "
            "denoise_strength, output_format, alpha_mode"
        ),
        json_schema_extra=KWARGS,
    )
    priority: WholeNumber = Field(default=5, ge=0, le=10, description="0 (lowest) to 10 (highest)")
    sync: StrictBool = Field(default=False, description="Wait for completion (bounded by TM_SYNC_WAIT_S)")
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Optional http(s) URL the final status is POSTed to when the task ends (docs/events.md); "
        "private, loopback and link-local addresses are refused",
        json_schema_extra={"pattern": CALLBACK_PATTERN},  # enforced, with a readable 400, in submission.py
    )


class SubmitTaskResponse(BaseModel):
    task_id: str
    state: str
    submitted_at: str


class TaskResult(BaseModel):
    """A SUCCESS task's `result`: the reference's fields, then the written image and the model that made it."""

    # As services/uploader/worker.py `task_result` writes it, described field by field so that generated
    # clients get a typed model rather than a mapping. Every field may be missing (a result stored by an
    # earlier version, or by a tool, lacks the later ones: read, not refused with a 500), and a field a newer
    # uploader adds still reaches the client.
    model_config = ConfigDict(extra="allow")

    task_id: str | None = None
    input_url: str | None = None
    output_url: str | None = None
    classification: Classification | None = Field(default=None, description="What the classifier found in the input")
    output_width: int | None = Field(default=None, description="Width of the written image, in pixels")
    output_height: int | None = Field(default=None, description="Height of the written image, in pixels")
    output_format: str | None = Field(
        default=None, description="png, jpeg or webp: as asked, else from the output URL, else png"
    )
    model: str | None = Field(
        default=None,
        description="The model that ran, with the reason when it is not the one routed or asked for "
        "(a stand-in network, or lanczos when no weights are installed)",
    )


# The stored status (shared/taskstate/status.py) with its `result` typed: the stored model keeps a mapping
# there, so that no stage depends on the API's view of it. It shares the stored model's name because the name
# is the document's (`#/components/schemas/TaskStatus`), which generated clients are built on.
class TaskStatus(stored.TaskStatus):
    """What GET /api/v1/tasks/{id} returns: the reference's fields plus a few users will want."""

    result: TaskResult | None = Field(default=None, description="Set once the task is SUCCESS")  # type: ignore[assignment]
    eta: str | None = Field(
        default=None,
        description="Estimated completion (ISO 8601 UTC) of a PENDING, RECEIVED or STARTED task, from the workers' "
        "measured time per task and the queue ahead of it; null once the task has ended, or while no worker of a "
        "stage still ahead has measured a task. How close it comes: docs/operations.md",
    )
    eta_s: float | None = Field(
        default=None, description="The same as seconds from when this status was read (no clock to agree on)"
    )


class CleanupResponse(BaseModel):
    status: str
    message: str


class HealthResponse(BaseModel):
    status: str
    service: str
    version: str
    detail: str | None = None


class ErrorResponse(BaseModel):
    detail: str


def error(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry for an error answered with ErrorResponse."""
    return {"model": ErrorResponse, "description": description}


def operation_id(route: APIRoute) -> str:
    """A route's operationId in the document: its function's name (submit_task, get_task), which is what a
    generated client names the call (FastAPI's default adds the path and method: submit_task_api_v1_tasks_post)."""
    return route.name

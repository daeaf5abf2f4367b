"""Request and response bodies of the REST API (the shapes of ../API-REFERENCE.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from pydantic.config import JsonDict

from services.api.tasks.accepted import ARGS, CALLBACK_PATTERN, KWARGS, OUTPUT_FORMAT_RULE
from shared.messages import TASK_NAME, WholeNumber


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
        description="Optional: model, outscale, tile, tile_pad, pre_pad, denoise_strength, output_format, alpha_mode",
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

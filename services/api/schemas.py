"""Request and response bodies of the REST API (the shapes of ../API-REFERENCE.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from pydantic.config import JsonDict

from shared.messages import TASK_NAME, UpscaleOptions

# What the API accepts, as far as JSON Schema can say it (the OpenAPI document shows it; the
# checks themselves, with their field-level 400s, are in services/api/submission.py).
ARGS_SCHEMA: JsonDict = {"items": {"type": "string", "minLength": 1}, "minItems": 2, "maxItems": 2}
# An http(s) URL with a host (name, IPv4 or bracketed IPv6), optional port, path and query: the schema says
# what is accepted; submission.py enforces it and then which hosts may be reached (the address policy).
CALLBACK_PATTERN = (
    r"^https?://([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[^\s?#]*)?(\?[^\s#]*)?$"
)
KWARGS_SCHEMA: JsonDict = {
    "properties": UpscaleOptions.model_json_schema()["properties"],
    "additionalProperties": False,
}


class SubmitTaskRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "task_name": TASK_NAME,
                    "args": ["https://example.com/input.jpg", "https://s3.amazonaws.com/bucket/output.jpg"],
                    "kwargs": {},
                    "priority": 5,
                    "sync": False,
                }
            ]
        },
    )

    task_name: str = Field(description="Name of the task to execute", json_schema_extra={"enum": [TASK_NAME]})
    args: list[Any] = Field(default_factory=list, description="[input_url, output_url]", json_schema_extra=ARGS_SCHEMA)
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Optional: model, outscale, tile, tile_pad, pre_pad, denoise_strength, output_format, alpha_mode",
        json_schema_extra=KWARGS_SCHEMA,
    )
    priority: StrictInt = Field(default=5, ge=0, le=10, description="0 (lowest) to 10 (highest)")
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

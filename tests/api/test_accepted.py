"""The submission schema in the OpenAPI document says what submission.py accepts (pure logic, no server).

A request the API takes must be valid under the document, and a typical valid-looking request the
document allows must be taken: otherwise clients (and the schemathesis contract test) are misled.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from services.api.schemas import SubmitTaskRequest
from services.api.tasks.submission import SubmissionError, validate_submission

TASK = "image_super_resolution_pipeline"
SCHEMA = SubmitTaskRequest.model_json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

ACCEPTED: list[dict[str, Any]] = [
    {"task_name": TASK, "args": ["https://example.com/in.jpg", "s3://bucket/out.png"]},
    {"task_name": TASK, "args": ["s3://photos/a/b.jpg", "s3://my.bucket/x/y.JPEG"], "priority": 10},
    {"task_name": TASK, "args": ["http://93.184.216.34:8080/in.png?x=1", "https://s3.amazonaws.com/bucket/o.webp"]},
    {"task_name": TASK, "args": ["https://[2001:db8::1]/in.png", "https://up.example.com/put/o.png?sig=abc"]},
    {
        "task_name": TASK,
        "args": ["https://example.com/in", "s3://bucket/no-extension"],
        "kwargs": {"output_format": "png"},
    },
    {
        "task_name": TASK,
        "args": ["https://example.com/i.png", "s3://bucket/o.png"],
        "kwargs": {"tile": 0, "tile_pad": 64},
    },
    {"task_name": TASK, "args": ["https://example.com/i.png", "s3://bucket/o.png"], "priority": 5.0},
    {
        "task_name": TASK,
        "args": ["https://example.com/i.png", "s3://bucket/o.png"],
        "kwargs": {"model": "realesr-general-x4v3", "denoise_strength": 0.5, "outscale": 2},
        "callback_url": "https://hooks.example.com/done?task=1",
    },
]

REFUSED_BY_BOTH: list[tuple[dict[str, Any], str]] = [
    ({"task_name": TASK}, "args"),
    ({"task_name": TASK, "args": ["ftp://example.com/in.jpg", "s3://bucket/out.png"]}, "args[0]"),
    ({"task_name": TASK, "args": ["https://example.com/in.jpg", "s3://bucket/out"]}, "args[1]"),
    ({"task_name": TASK, "args": ["https://example.com/in.jpg", "s3://Bucket_Name/out.png"]}, "args[1]"),
    ({"task_name": TASK, "args": ["https://[F5f9]/in.jpg", "s3://bucket/out.png"]}, "args[0]"),
    (
        {"task_name": TASK, "args": ["https://example.com/i.png", "s3://bucket/o.png"], "kwargs": {"tile": 5}},
        "kwargs.tile",
    ),
    (
        {
            "task_name": TASK,
            "args": ["https://example.com/i.png", "s3://bucket/o.png"],
            "kwargs": {"denoise_strength": 1},
        },
        "kwargs.denoise_strength",
    ),
    (
        {"task_name": TASK, "args": ["https://example.com/i.png", "s3://bucket/o.png"], "kwargs": {"model": "nope"}},
        "kwargs.model",
    ),
    ({"task_name": TASK, "args": ["https://example.com/i.png", "s3://bucket/o.png"], "priority": 5.5}, "priority"),
]


def _api_accepts(body: dict[str, Any]) -> None:
    request = SubmitTaskRequest.model_validate(body)
    validate_submission(request, s3_endpoint=None)


@pytest.mark.parametrize("body", ACCEPTED)
def test_what_the_api_accepts_is_valid_under_the_document(body: dict[str, Any]) -> None:
    _api_accepts(body)
    VALIDATOR.validate(body)


@pytest.mark.parametrize(("body", "field"), REFUSED_BY_BOTH)
def test_what_the_document_refuses_the_api_refuses_naming_the_field(body: dict[str, Any], field: str) -> None:
    assert not VALIDATOR.is_valid(body)
    with pytest.raises((SubmissionError, ValueError)) as refused:
        _api_accepts(body)
    assert field in str(refused.value)


def test_the_document_example_is_accepted() -> None:
    (example,) = SCHEMA["examples"]
    VALIDATOR.validate(example)
    _api_accepts(example)

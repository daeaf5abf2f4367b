"""Target-size kwargs at the API: the 400s name the field, a good target is taken, /docs describes it.

The API runs alone over real HTTP on a NATS of its own, with a small TM_MAX_OUTPUT_PIXELS so that a
target box over it is refused at submission.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from services.api.schemas import SubmitTaskRequest
from tests.api.conftest import SUBMISSION, api_only
from tests.system import System

MAX_OUTPUT_PIXELS = 4_000_000
VALIDATOR = jsonschema.Draft202012Validator(SubmitTaskRequest.model_json_schema())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with api_only(tmp_path_factory.mktemp("target"), TM_MAX_OUTPUT_PIXELS=str(MAX_OUTPUT_PIXELS)) as system:
        yield system


REFUSED = [
    ({"target_width": 0}, "kwargs.target_width: must be 1..65535, got 0"),
    ({"target_height": 65536}, "kwargs.target_height: must be 1..65535, got 65536"),
    ({"target_width": "800"}, "kwargs.target_width: Input should be a valid integer"),
    ({"target_width": 800.5}, "kwargs.target_width: Input should be a valid integer"),
    ({"target_height": True}, "kwargs.target_height: Input should be a valid integer"),
    ({"target_width": 800, "fit": "fill"}, "kwargs.fit: must be one of contain, cover, stretch, got 'fill'"),
    ({"fit": "cover"}, "kwargs.fit: applies only to a target size"),
    ({"target_width": 800, "outscale": 2}, "kwargs.outscale: cannot be combined with kwargs.target_width"),
    (
        {"target_width": 4000, "target_height": 1001},
        "kwargs.target_width/target_height: output would be 4000x1001 (4.004 MP), over the 4 MP limit "
        "(TM_MAX_OUTPUT_PIXELS)",
    ),
]


@pytest.mark.parametrize(("kwargs", "detail"), REFUSED)
def test_bad_targets_are_400s_naming_the_field(api: System, kwargs: dict[str, Any], detail: str) -> None:
    response = httpx.post(f"{api.api_url}/api/v1/tasks", json={**SUBMISSION, "kwargs": kwargs}, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(detail), response.json()


ACCEPTED = [
    {"target_width": 4000, "target_height": 1000, "fit": "cover"},  # exactly the limit
    {"target_width": 1920, "target_height": 1080},  # fit unset: contain
    {"target_width": 1920, "target_height": 1080, "fit": "stretch", "model": "realesr-animevideov3"},
    {"target_height": 2160},
    {"target_width": 1000, "fit": "contain"},  # fit given with one side: it plays no part
    {"target_width": 64, "target_height": None, "fit": None, "outscale": None},
]


@pytest.mark.parametrize("kwargs", ACCEPTED)
def test_good_targets_are_taken_and_kept_with_the_task(api: System, kwargs: dict[str, Any]) -> None:
    response = httpx.post(f"{api.api_url}/api/v1/tasks", json={**SUBMISSION, "kwargs": kwargs}, timeout=10)
    assert response.status_code == 202, response.text
    task = httpx.get(f"{api.api_url}/api/v1/tasks/{response.json()['task_id']}", timeout=10).json()
    assert task["kwargs"] == kwargs


@pytest.mark.parametrize("kwargs", ACCEPTED)
def test_the_document_allows_what_the_api_takes(kwargs: dict[str, Any]) -> None:
    VALIDATOR.validate({**SUBMISSION, "kwargs": kwargs})


@pytest.mark.parametrize(
    "kwargs", [{"target_width": 0}, {"target_height": 65536}, {"target_width": "800"}, {"fit": "fill"}]
)
def test_the_document_refuses_what_json_schema_can_say(kwargs: dict[str, Any]) -> None:
    assert not VALIDATOR.is_valid({**SUBMISSION, "kwargs": kwargs})


def test_docs_describe_the_fields(api: System) -> None:
    document = httpx.get(f"{api.api_url}/openapi.json", timeout=10).json()
    text = str(document)
    for phrase in ("target_width: the output's width in pixels", "fit: how target_width x target_height is filled"):
        assert phrase in text

"""Task ids are spelled one way, as the API creates them (lower-case 8-4-4-4-12 hex): any other
spelling of a UUID (braces, urn:uuid:, upper case, bare hex) is an unknown task on every route, a
404 answered without asking NATS (which refuses such keys: a 503 before)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from services.api.tasks.routes import valid_id
from tests.api.conftest import SUBMISSION, api_only

SOME = uuid.uuid4()
NOT_CANONICAL = {
    "braces": f"{{{SOME}}}",
    "urn": f"urn:uuid:{SOME}",
    "uuid prefix": f"uuid:{SOME}",
    "upper case": str(SOME).upper(),
    "one upper-case digit": str(SOME)[:-1] + "A",
    "bare hex": SOME.hex,
    "bare hex in braces": f"{{{SOME.hex}}}",
    "trailing newline": f"{SOME}\n",
    "spaces": f" {SOME} ",
}
ROUTES = [("GET", "/api/v1/tasks/{}"), ("DELETE", "/api/v1/tasks/{}"), ("POST", "/api/v1/tasks/{}/revoke"),
          ("GET", "/api/v1/tasks/{}/events")]  # fmt: skip


def test_only_the_canonical_spelling_is_an_id() -> None:
    assert valid_id(str(SOME)) and valid_id(str(uuid.uuid4()))
    for spelling in NOT_CANONICAL.values():
        uuid.UUID(spelling.strip())  # what made them look like ids
        assert not valid_id(spelling), spelling


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_only(tmp_path_factory.mktemp("ids")) as system:
        yield system.api_url


@pytest.mark.parametrize(("method", "route"), ROUTES, ids=[f"{m} {r}" for m, r in ROUTES])
@pytest.mark.parametrize("task_id", NOT_CANONICAL.values(), ids=NOT_CANONICAL.keys())
async def test_another_spelling_is_404_on_every_task_route(api_url: str, method: str, route: str, task_id: str) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as api:
        response = await api.request(method, route.format(quote(task_id, safe="")))
    assert response.status_code == 404, response.text
    assert response.json()["detail"] == f"Task {task_id} not found"


async def test_an_existing_task_is_found_by_its_own_spelling_only(api_url: str) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as api:
        task_id = (await api.post("/api/v1/tasks", json=SUBMISSION)).json()["task_id"]
        assert (await api.get(f"/api/v1/tasks/{task_id}")).status_code == 200
        for spelling in (task_id.upper(), f"{{{task_id}}}", f"urn:uuid:{task_id}", uuid.UUID(task_id).hex):
            assert (await api.get(f"/api/v1/tasks/{spelling}")).status_code == 404, spelling

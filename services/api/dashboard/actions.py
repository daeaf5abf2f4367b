"""The task page's Revoke and Retry buttons: form POSTs to /dashboard/tasks/{id}/revoke and /retry,
which run the API's own revoke and retry (services/api/tasks/control.py), then go back to the page.

The dashboard's session cookie is ambient (a browser sends it with any request to /dashboard), so a
button's form carries a CSRF token the page was rendered with: an HMAC of the task id keyed by the
session cookie itself. Only a page that could read the cookie's value, i.e. this server's own
rendering for that session, can hold it; another site's form cannot, and a token stops working when
the session changes. A POST also needs the same origin (signin.cross_origin: Origin, Sec-Fetch-Site).
Without a session (keys off: nothing to ride; or a header key, which no other site's form can send)
the token is keyed by nothing and the origin check is what stands.
"""

from __future__ import annotations

import hashlib
import hmac
from html import escape
from urllib.parse import parse_qs

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.api.dashboard.signin import cross_origin
from services.api.dashboard.taskpage import fill, task_href
from services.api.guards.auth import SESSION_COOKIE

CSRF_FIELD = "csrf"


def csrf_token(request: Request, task_id: str) -> str:
    """The token the task page's forms carry for this session and task."""
    key = request.cookies.get(SESSION_COOKIE, "").encode()
    return hmac.new(key, f"tm-dashboard-csrf.{task_id}".encode(), hashlib.sha256).hexdigest()


def _message(status_code: int, task_id: str, text: str) -> HTMLResponse:
    back = f"<a href='{escape(task_href(task_id))}'>Back to the task</a>"
    return HTMLResponse(fill("task action", f"<h2>Not done</h2><p class='error'>{escape(text)}</p><p>{back}</p>"),
                        status_code=status_code)  # fmt: skip


async def refused(request: Request, task_id: str) -> Response | None:
    """The answer to a POST without this page's token or from another origin; None when it may go on."""
    if (other := cross_origin(request)) is not None:
        return other
    fields = parse_qs((await request.body()).decode("utf-8", "replace"))
    sent = fields.get(CSRF_FIELD, [""])
    if len(sent) != 1 or not hmac.compare_digest(sent[0], csrf_token(request, task_id)):
        return _message(403, task_id, "This form is out of date or was not sent from the task page: reload it.")
    return None


def done(task_id: str, exc: HTTPException | None) -> Response:
    """Back to the task's page, or the API's refusal (409: already ended, not retryable) in words."""
    if exc is None:
        return RedirectResponse(task_href(task_id), status_code=303)
    return _message(exc.status_code, task_id, str(exc.detail))

"""Signing a browser in to the dashboard when API keys are on: a form that takes a key and sets the
session cookie (services/api/guards/auth.py), and the page shown instead of a bare 401 to a browser.

Only the /dashboard routes accept the cookie; the task API keeps needing a key in a header. Both forms
refuse a browser's request sent from another origin's page (login CSRF: signing a victim's browser in
with the attacker's key, or out): 403 when `Sec-Fetch-Site` says another site, or `Origin` is not this
API's own scheme://host[:port] as it sees the request. A request without either (curl, scripts) is no
browser's and passes.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from services.api.deps import ContextDep
from services.api.guards.auth import CHALLENGE, SESSION_COOKIE, UNAUTHORIZED, ApiKeyGuard, revoke
from services.api.schemas import error

DASHBOARD = "/dashboard"
SIGN_IN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>task-manager: sign in</title><link rel="icon" href="data:,">
<style>body{font:15px system-ui,sans-serif;background:#f4f6f8;color:#1b2430;display:grid;place-items:center;
min-height:90vh}form{background:#fff;padding:28px 32px;border-radius:8px;box-shadow:0 1px 4px #0002;width:360px}
h1{font-size:20px;margin:0 0 16px}label{display:block;margin-bottom:6px}input{width:100%;padding:8px;
font:inherit;border:1px solid #8a96a3;border-radius:4px}button{margin-top:14px;padding:8px 18px;font:inherit;
background:#1f5fa8;color:#fff;border:0;border-radius:4px}.error{color:#a3211b;margin:0 0 12px}</style>
</head><body><form method="post" action="/dashboard/signin">
<h1>task-manager dashboard</h1><!--error-->
<label for="key">API key</label><input id="key" name="key" type="password" autocomplete="current-password" required
autofocus><button type="submit">Sign in</button></form></body></html>
"""
FORM = "application/x-www-form-urlencoded"
# A form field is text whatever it holds, so `key` has no type: any value is a key to check.
FORM_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        FORM: {"schema": {"type": "object", "properties": {"key": {"description": "an API key"}}, "required": ["key"]}}
    },
}
# The dashboard routes' 401 once browsers can sign in: JSON, or the sign-in page to a request that accepts HTML.
DASHBOARD_401: dict[int | str, dict[str, Any]] = {
    401: {
        **UNAUTHORIZED[401],
        "description": "Missing or wrong API key or session (a browser asking for HTML gets the sign-in page)",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
}
CROSS_ORIGIN = error("Sent from another origin's page (Origin or Sec-Fetch-Site)")
SAME_ORIGIN_FETCHES = ("same-origin", "none")  # "none": typed in or bookmarked, no page sent it
DEFAULT_PORTS = {"http": ":80", "https": ":443"}
FORM_AGAIN: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Not a valid key: the form again, saying so",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
}


def sign_in_page(error: str | None = None) -> HTMLResponse:
    """The form: 401 where a dashboard route was asked for without a key, 200 again after a wrong key
    (the form answered; what it refused is said on the page)."""
    if error is None:
        return HTMLResponse(SIGN_IN_PAGE.replace("<!--error-->", ""), status_code=401, headers=CHALLENGE)
    return HTMLResponse(SIGN_IN_PAGE.replace("<!--error-->", f"<p class='error'>{escape(error)}</p>"))


def cross_origin(request: Request) -> JSONResponse | None:
    """The 403 for a browser's request from another origin's page; None for anything else."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.lower() not in SAME_ORIGIN_FETCHES:
        return JSONResponse({"detail": f"Sec-Fetch-Site: {site} requests are refused here"}, status_code=403)
    origin = request.headers.get("origin")
    if origin is not None and _origin(origin) != _origin(f"{request.url.scheme}://{request.url.netloc}"):  # Host
        return JSONResponse({"detail": "Origin: requests from another origin are refused here"}, status_code=403)
    return None


def _origin(text: str) -> str:
    """scheme://host[:port] as compared: lower case, without the scheme's default port."""
    origin = text.strip().lower()
    scheme = origin.partition("://")[0]
    return origin.removesuffix(DEFAULT_PORTS[scheme]) if scheme in DEFAULT_PORTS else origin


async def show_sign_in(request: Request, exc: Exception) -> Response:
    """The answer to SignInRequired: a browser that asked for the dashboard gets the form, not JSON."""
    return sign_in_page()


def signin_router(guard: ApiKeyGuard) -> APIRouter:
    router = APIRouter(prefix=DASHBOARD, tags=["monitoring"])

    @router.post(
        "/signin",
        response_class=Response,
        status_code=303,
        openapi_extra={"requestBody": FORM_BODY},
        responses={
            303: {"description": "Signed in: the session cookie is set, on to the dashboard"},
            **FORM_AGAIN,
            400: error("No key field, or more than one"),
            403: CROSS_ORIGIN,
            415: error(f"The body is not {FORM}"),
        },
    )
    async def sign_in(request: Request) -> Response:
        """Sign a browser in to the dashboard with an API key (form field `key`)."""
        if (refused := cross_origin(request)) is not None:
            return refused
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
            return JSONResponse({"detail": f"body: send the sign-in form as {FORM}"}, status_code=415)
        fields = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        if len(fields.get("key", [])) != 1:
            return JSONResponse({"detail": "key: the form needs exactly one key field"}, status_code=400)
        index = guard.authenticate(request, fields["key"][0])
        if index is None:
            return sign_in_page("That is not a valid API key.")
        response = RedirectResponse(DASHBOARD, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            guard.issue_session(index),
            max_age=int(guard.session_s),
            path=DASHBOARD,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post(
        "/signout",
        response_class=Response,
        status_code=303,
        responses={303: {"description": "Signed out"}, 403: CROSS_ORIGIN, 503: error("NATS unreachable")},
    )
    async def sign_out(request: Request, ctx: ContextDep) -> Response:
        """End this browser's dashboard session (on every API replica)."""
        if (refused := cross_origin(request)) is not None:
            return refused
        if (session := guard.session(request.cookies.get(SESSION_COOKIE))) is not None:
            await revoke(ctx.topology.sessions, session)
        response = RedirectResponse(DASHBOARD, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=DASHBOARD, httponly=True, samesite="strict")
        return response

    return router

"""HEAD on every GET route, as pure ASGI middleware: the app answers a GET, and the client gets its
status and headers without the body.

FastAPI's routes answer only the methods they declare (Starlette's own add HEAD to GET; FastAPI's do
not), and declaring HEAD on each route would add an operation per path to the OpenAPI document. A
path without GET answers HEAD as it answers GET: 405, or 404. A streaming answer (the SSE events
route) never ends by itself, so the app is cancelled once the headers are out.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADERS_ONLY: Message = {"type": "http.response.body", "body": b"", "more_body": False}


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = False
        with anyio.CancelScope() as streaming:

            async def headers_only(message: Message) -> None:
                nonlocal ended
                if ended:
                    return
                if message["type"] == "http.response.body":
                    ended = True
                    await send(HEADERS_ONLY)
                    if message.get("more_body", False):
                        streaming.cancel()  # the rest would never be sent: stop making it
                    return
                await send(message)

            # The server's own scope still says HEAD, so it sends no body either way.
            await self.app({**scope, "method": "GET"}, receive, headers_only)

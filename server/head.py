"""HEAD on every GET route, answered as that GET without its body.

FastAPI's routes answer only the methods they declare, so `HEAD /health` (uptime monitors,
`curl -I`) was a 405. RFC 9110 §9.3.2: a server answers HEAD with the header fields it would
send for GET, and no content.

Invariants: a HEAD request reaches the app as a GET (so routing, security and errors behave as
for GET; a resource without GET still answers 405); every body chunk the app sends is dropped and
the response ends with one empty chunk; the status and headers (Content-Length included) are
the GET's.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: HEAD served by the GET route of the same path, body dropped."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)

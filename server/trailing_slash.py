"""A path with a trailing slash is served by the route without it.

Starlette answers `POST /v1/chat/completions/` with a 307 to the path without the slash and an
empty body: curl without `-L`, and clients that do not re-send a body on a redirect, see a blank
response, and `GET /v1/models/` reached the model lookup with an empty id (a 404 naming model
''). Clients that build URLs from a base ending in `/` send such paths.

Invariants: only the path the router sees changes (`path` and `raw_path`, every trailing slash
dropped, `/` itself kept); the method, headers, query and body are the request's own.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class TrailingSlash:
    """ASGI middleware: `/x/` routed as `/x`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            stripped = path.rstrip("/") or "/"
            raw = scope.get("raw_path")
            scope = {**scope, "path": stripped}
            if isinstance(raw, bytes):
                scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)

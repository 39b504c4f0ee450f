"""Access control in front of every route: Host allowlist, Origin allowlist, API keys, header size.

A server on 127.0.0.1 is reachable by every process on the machine and, through the browser, by
every web page the user opens. Defaults are therefore strict without being in the way of local
clients: only loopback Host names (defeats DNS rebinding), no cross-origin browser requests unless
origins are configured (a page could otherwise make the model work for it even if CORS hides the
answer), and API keys when configured.

Invariants: the checks run on the ASGI scope's routed `path` (what the router matches), before any
route code; every refusal is in the error shape of the request's API (server.errors.error_wire);
a key comes as `Authorization: Bearer` or, as Anthropic clients send it, `x-api-key`; keys are
compared in constant time against every configured key; `/health`, the status page `/` and its data
`/status` (versions, models, counters: what /health shows) are the only routes open without a key.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import Wire, error_wire, wire_error_body

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
OPEN_PATHS = frozenset({"/health", "/", "/status"})  # health, the status page and its data


def host_name(host_header: str) -> str:
    """The name part of a Host header: 'localhost:8000' → 'localhost', '[::1]:80' → '[::1]'."""
    if host_header.startswith("["):
        return host_header.split("]", 1)[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


async def send_error(
    send: Send,
    status: int,
    message: str,
    type_: str,
    code: str,
    extra_headers: list[tuple[bytes, bytes]],
    wire: Wire = "openai",
) -> None:
    """Answer with an error in `wire`'s shape straight from ASGI middleware (before any
    route)."""
    body = json.dumps(wire_error_body(wire, status, message, type_, code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AccessControl:
    """Pure ASGI middleware (it also guards streaming routes without buffering them)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str],
        allowed_origins: Iterable[str],
        api_keys: Iterable[str],
        max_header_bytes: int,
    ) -> None:
        self.app = app
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.api_keys = [key.encode() for key in api_keys if key]
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, code, extra = refusal
        wire = error_wire(scope)
        await send_error(send, status, message, "invalid_request_error", code, extra, wire)

    def _refusal(self, scope: Scope) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        headers = scope["headers"]
        if sum(len(name) + len(value) for name, value in headers) > self.max_header_bytes:
            return (
                431,
                f"Request headers exceed {self.max_header_bytes} bytes",
                "headers_too_large",
                [],
            )
        found = {
            name: value
            for name, value in headers
            if name in (b"host", b"origin", b"authorization", b"x-api-key")
        }
        host = host_name(found.get(b"host", b"").decode("latin-1")).lower()
        if "*" not in self.allowed_hosts and host not in self.allowed_hosts:
            return (
                403,
                "Host not allowed (set MLXD_ALLOWED_HOSTS to serve other names)",
                "host_not_allowed",
                [],
            )
        origin = found.get(b"origin")
        if origin is not None:
            name = origin.decode("latin-1").rstrip("/").lower()
            if "*" not in self.allowed_origins and name not in self.allowed_origins:
                return (
                    403,
                    "Origin not allowed (set MLXD_CORS_ORIGINS to allow it)",
                    "origin_not_allowed",
                    [],
                )
        if self.api_keys and scope["path"] not in OPEN_PATHS:
            given = found.get(b"authorization", b"")
            token = given[7:] if given[:7].lower() == b"bearer " else b""
            offered = (token, found.get(b"x-api-key", b""))
            # Compare against every key, always, so timing says nothing about which part matched.
            matches = [hmac.compare_digest(o, key) for o in offered for key in self.api_keys]
            if not any(matches):
                challenge = [(b"www-authenticate", b'Bearer realm="mlxd"')]
                return 401, "Incorrect or missing API key", "invalid_api_key", challenge
        return None


class ConcurrencyLimit:
    """At most `limit` HTTP requests in progress (streams count until they end); beyond that a
    503 with `Retry-After`, in the route's API's shape — uvicorn's own limit would answer in
    plain text."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            message = f"The server is handling {self.limit} requests, its limit; retry shortly"
            retry = [(b"retry-after", b"1")]
            wire = error_wire(scope)
            await send_error(send, 503, message, "server_error", "server_busy", retry, wire)
            return
        self.in_progress += 1  # the event loop is single-threaded: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1


class ShapedCORS(CORSMiddleware):
    """Starlette's CORS middleware, its refused preflight (a 400: an origin, method or header
    the configuration does not allow) answered in the route's error shape instead of plain
    text; browsers read only the status, other clients the body."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else Headers()
        if (
            scope.get("method") == "OPTIONS"
            and "origin" in headers
            and "access-control-request-method" in headers
        ):
            response = self.preflight_response(request_headers=headers)
            if response.status_code == 400:
                message = bytes(response.body).decode()  # "Disallowed CORS origin, method"
                cors = [
                    (name, value)
                    for name, value in response.raw_headers
                    if name not in (b"content-type", b"content-length")
                ]
                wire = error_wire(scope)
                await send_error(
                    send, 400, message, "invalid_request_error", "cors_disallowed", cors, wire
                )
                return
        await super().__call__(scope, receive, send)

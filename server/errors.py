"""One error shape, one mapping table.

Every error leaves as `{"error": {"message", "type", "param", "code"}}` — or, to Anthropic
clients (the Messages routes, or any request with an `anthropic-version` header), as Anthropic's
`{"type": "error", "error": {"type", "message"}}` with the same status; on Ollama's routes as
`{"error": message}` and to Cohere clients (its embed routes and `/v2/rerank`, or any request
from a Cohere SDK) as `{"message": message}`. Engine errors map to a
status through `ERRORS`; HTTP-level errors (unknown route, wrong method) and anything unexpected
are shaped here too, so no client ever sees a framework's own error body.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from engines.errors import (
    ContextTooLong,
    EngineError,
    EngineFailed,
    EngineUnavailable,
    InvalidRequest,
    KVBudgetExceeded,
    ModelInUse,
    ModelNotFound,
    NoChatTemplate,
    Overloaded,
    ShuttingDown,
)
from server.validation_messages import pydantic_message

logger = logging.getLogger(__name__)

# engine error class → (HTTP status, OpenAI error type, code)
ERRORS: dict[type[EngineError], tuple[int, str, str | None]] = {
    ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    ContextTooLong: (400, "invalid_request_error", "context_length_exceeded"),
    InvalidRequest: (400, "invalid_request_error", None),
    KVBudgetExceeded: (400, "invalid_request_error", "kv_budget_exceeded"),
    ModelInUse: (409, "invalid_request_error", "model_in_use"),
    Overloaded: (429, "rate_limit_error", "overloaded"),
    EngineUnavailable: (503, "server_error", "model_unavailable"),
    ShuttingDown: (503, "server_error", "server_shutting_down"),
    EngineFailed: (500, "server_error", "engine_failed"),
}
# What to do instead, for engine errors that have an answer at this edge (engines know no URLs).
HINTS: dict[type[EngineError], str] = {
    NoChatTemplate: "use /v1/completions with a plain prompt",
}


class APIError(Exception):
    """An HTTP-edge error with its OpenAI fields; raise it from routes."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        anthropic_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.anthropic_message = anthropic_message  # Anthropic's own wording, where it differs
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# HTTP status → Anthropic error type (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
ANTHROPIC_PATH = "/v1/messages"


OLLAMA_PREFIX = "/api/"
COHERE_PATHS = frozenset({"/v1/embed", "/v2/embed", "/v2/rerank"})

Wire = Literal["openai", "anthropic", "ollama", "cohere"]


def error_wire(scope: Scope) -> Wire:
    """The API whose error shape a request's errors take: Anthropic's on its routes (and for
    any request carrying `anthropic-version`); Cohere's on the paths only Cohere's clients post
    to (its embed routes, `/v2/rerank`) and for any request from a Cohere SDK, which names
    itself in `X-Fern-SDK-Name` ("cohere", "cohere-ai": /v1/rerank is also Jina's, Voyage's
    and Open WebUI's, which read OpenAI's shape); Ollama's on `/api/…`; else OpenAI's."""
    path: str = scope["path"]
    headers = dict(scope["headers"])  # names are lower-case bytes in ASGI
    anthropic_path = path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")
    if anthropic_path or b"anthropic-version" in headers:
        return "anthropic"
    if path in COHERE_PATHS or b"cohere" in headers.get(b"x-fern-sdk-name", b"").lower():
        return "cohere"
    return "ollama" if path.startswith(OLLAMA_PREFIX) else "openai"


def wire_error_body(
    wire: Wire, status: int, message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """An error body in `wire`'s shape (Ollama's is `{"error": message}`, Cohere's
    `{"message": message}`)."""
    if wire == "anthropic":
        return anthropic_error_body(status, message)
    if wire == "ollama":
        return {"error": message}
    if wire == "cohere":
        return {"message": message}
    return error_body(message, type_, param, code)


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    return {
        "type": "error",
        "error": {"type": ANTHROPIC_TYPES.get(status, fallback), "message": message},
    }


def from_engine_error(error: Exception) -> APIError:
    """The APIError for an engine error (unknown exceptions become a generic 500)."""
    for cls in type(error).__mro__:
        if cls in ERRORS:
            assert isinstance(error, EngineError)
            status, type_, code = ERRORS[cls]
            headers = {}
            retry_after = getattr(error, "retry_after_s", None)  # Overloaded, ModelDownloading
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
            if isinstance(error, EngineFailed):
                headers["x-should-retry"] = "false"  # the OpenAI SDK would otherwise retry 500s
            hint = HINTS.get(type(error))
            message = f"{error.message}; {hint}" if hint else error.message
            anthropic = anthropic_wording(error) if isinstance(error, ContextTooLong) else None
            return APIError(status, message, type_, error.param, code, headers, anthropic)
    return APIError(500, "internal error", "server_error", None, "internal_error")


def anthropic_wording(error: ContextTooLong) -> str | None:
    """Anthropic's messages for a prompt over the context, with their counts: Claude Code reads
    the counts from these exact forms (to compact the conversation, or to retry with a smaller
    `max_tokens`). A prompt alone must leave room for one output token: its maximum is the
    context less one (a prompt the context's length is over it, never `4096 > 4096`)."""
    if error.prompt_tokens is None or error.limit is None:
        return None
    if error.max_tokens is None:
        return f"prompt is too long: {error.prompt_tokens} tokens > {error.limit - 1} maximum"
    return (
        "input length and `max_tokens` exceed context limit: "
        f"{error.prompt_tokens} + {error.max_tokens} > {error.limit}, "
        "decrease input length or `max_tokens` and try again"
    )


def wire_body(error: APIError, wire: Wire) -> dict[str, Any]:
    """`error`'s body in `wire`'s shape: what the handlers send, and what a route that answers
    an engine error itself (server/serving.py's `shape`) passes as
    `functools.partial(wire_body, wire=error_wire(request.scope))`."""
    message = (error.anthropic_message or error.message) if wire == "anthropic" else error.message
    return wire_error_body(wire, error.status, message, error.type, error.code, error.param)


def _response(error: APIError, request: Request) -> JSONResponse:
    body = wire_body(error, error_wire(request.scope))
    return JSONResponse(body, status_code=error.status, headers=error.headers)


_HTTP_MESSAGES = {
    404: ("Unknown request URL", "not_found"),
    405: ("Method not allowed for this URL", "method_not_allowed"),
}


def _methods_for(request: Request) -> list[str]:
    """The methods of the resource this path names: the first route (in the router's order)
    whose template matches it, and every route with that same template (a resource's GET and
    DELETE may be two routes)."""
    routes = request.app.state.routes
    template = next((r.path for r in routes if r.path_regex.match(request.url.path)), None)
    methods: set[str] = set()
    for route in routes:
        if route.path == template:
            methods |= route.methods or set()
    if "GET" in methods:
        methods.add("HEAD")  # server/head.py answers it
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _response(exc, request)

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return _response(from_engine_error(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message, code = _HTTP_MESSAGES.get(exc.status_code, (str(exc.detail), "http_error"))
        message = f"{message}: {request.method} {request.url.path}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first matching route's methods only
            headers["Allow"] = ", ".join(_methods_for(request))
        return _response(
            APIError(exc.status_code, message, "invalid_request_error", None, code, headers),
            request,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else None
        if first is None:
            return _response(APIError(400, "invalid request"), request)
        error = APIError(400, pydantic_message(first), param=loc_to_param(first["loc"]))
        return _response(error, request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        error = APIError(500, "internal error", "server_error", None, "internal_error")
        return _response(error, request)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal"})


def loc_to_param(loc: Sequence[Any]) -> str | None:
    """pydantic error location → OpenAI `param` (`messages[0].role`)."""
    parts: list[str] = []
    for item in loc:
        if item == "body" or (isinstance(item, str) and (item in _TYPE_TAGS or "[" in item)):
            continue  # FastAPI's root, or the name of a union member pydantic tried
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
    return "".join(parts) or None

"""Logging: one line per record, with the request's id, as text or JSON (`--log-format`).

Invariants:
- Every record carries `request_id` ("-" outside a request): the `RequestId` middleware gives
  each HTTP request an id (routes that make their own, like `chatcmpl-…`, replace it) and sends
  it back in `x-request-id` (Anthropic's clients also in `request-id`); anything logged while
  serving that request carries it.
- Control characters in messages are escaped (`\\n` → `\\\\n`), so a value a client sent can never
  forge a log line; JSON lines are escaped by JSON itself.
- uvicorn's own loggers go through the same handler, so access lines get the same format.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from contextvars import ContextVar
from typing import IO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_wire

request_id: ContextVar[str] = ContextVar("request_id", default="-")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _escape(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def configure(level: str, log_format: str, stream: IO[str] | None = None) -> None:
    """Root logging for `mlxd serve`: one handler (stderr by default), our format, uvicorn's
    loggers too."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class RequestId:
    """Pure ASGI middleware: a request id per HTTP request, in the logs and `x-request-id`; for
    Anthropic's clients (server.errors.error_wire) also in `request-id`, where their SDKs read it
    (`message._request_id`, an error's `request_id`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = request_id.set(f"req-{secrets.token_hex(8)}")
        anthropic = error_wire(scope) == "anthropic"

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                given = [value for name, value in headers if name.lower() == b"x-request-id"]
                if not given:
                    given = [request_id.get().encode()]
                    headers.append((b"x-request-id", given[0]))
                if anthropic:
                    headers.append((b"request-id", given[0]))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)

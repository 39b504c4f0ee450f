"""How every route serves engine streams, written once: a client that goes away cancels its
work (499 when nothing was sent yet), an engine error becomes the route's error body, a stream
closed early — disconnect, shutdown, an error — cancels what it was reading, and work still
running when the drain at shutdown is cut ends with ShuttingDown (`server.drain`), which the
route answers like any engine error.

Invariant: every stream handed to these helpers is read to its end or cancelled, and is
tracked by the drain while it is read.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from server.deps import app_drain
from server.errors import APIError, from_engine_error
from server.generation import Collected, EventSource, collect, unless_disconnected

logger = logging.getLogger(__name__)
T = TypeVar("T")
F = TypeVar("F")


async def collected_or_gone(
    request: Request, work: Awaitable[T], streams: list[EventSource], request_id: str
) -> T | Response:
    """`work`'s result, or a 499 when the client disconnected first (its streams cancelled)."""
    with app_drain(request).tracking(streams):
        result = await unless_disconnected(request, work, streams)
    if result is None:
        logger.info("%s client disconnected; cancelled", request_id)
        return Response(status_code=499)
    return result


def error_response(
    error: Exception,
    headers: dict[str, str],
    shape: Callable[[APIError], dict[str, object]] = APIError.body,
) -> JSONResponse:
    """An engine error after acceptance, as the route's error body (`shape`; OpenAI's by
    default) with its status and headers (Retry-After…)."""
    api_error = from_engine_error(error)
    return JSONResponse(
        shape(api_error), status_code=api_error.status, headers={**headers, **api_error.headers}
    )


async def collected_whole(
    request: Request,
    stream: EventSource,
    request_id: str,
    headers: dict[str, str],
    shape: Callable[[APIError], dict[str, object]] = APIError.body,
) -> Collected | Response:
    """One request's stream read to its end, or the response to send instead: a 499 when the
    client went away first, the engine's error in the route's `shape`."""
    collected = await collected_or_gone(request, collect(stream), [stream], request_id)
    if not isinstance(collected, Response) and collected.error is not None:
        return error_response(collected.error, headers, shape)
    return collected


async def cancel_on_close(
    request: Request, frames: AsyncIterator[F], streams: list[EventSource], request_id: str
) -> AsyncIterator[F]:
    """`frames` passed through; if they are not read to their end (the client went away, the
    server is stopping, the route stopped early), `streams` are cancelled."""
    ended = False
    try:
        with app_drain(request).tracking(streams):
            async for frame in frames:
                yield frame
        ended = True
    finally:
        if not ended:
            for stream in streams:
                stream.cancel()
            logger.info("%s stream closed early; cancelling", request_id)

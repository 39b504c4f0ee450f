"""`POST /v1/chat/completions`, streamed (SSE) and not.

Everything that can be known before the first byte — body, schema, limits, model, template,
context length — is checked first and answered as a plain 4xx; only failures after the headers
went out become an in-stream error event. A client that goes away cancels its sequence, streamed
or not.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from engines.bridge import RequestStream
from engines.types import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent
from server import sse
from server.body import read_json_object, validate
from server.errors import APIError, from_engine_error
from server.schemas.chat import (
    ChatCompletionRequest,
    chunk,
    completion_response,
    ignored_fields,
    usage_body,
)

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    settings = request.app.state.settings
    pool = request.app.state.pool
    body = await read_json_object(request, settings.max_body_bytes)
    chat = validate(ChatCompletionRequest, body)
    if (field := chat.unsupported_field()) is not None:
        raise APIError(
            400,
            f"'{field}' is not supported by this server yet",
            param=field,
            code="unsupported_parameter",
        )
    stops = chat.stop_sequences()
    if len(stops) > settings.max_stop_sequences:
        raise APIError(
            400,
            f"At most {settings.max_stop_sequences} stop sequences are allowed, got {len(stops)}",
            param="stop",
        )
    engine = pool.acquire(chat.model)
    messages = [message.model_dump(exclude_none=True) for message in chat.messages]
    prompt = engine.encode_chat(messages)
    max_tokens = engine.check_fits(len(prompt), chat.requested_max_tokens())

    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    generation = GenerationRequest(request_id, prompt, max_tokens, chat.sampling(), stops)
    headers = {"x-request-id": request_id}
    if ignored := ignored_fields(body):
        headers["x-mlxd-ignored-fields"] = ",".join(ignored)
    logger.info(
        "%s chat model=%s prompt_tokens=%d max_tokens=%d stream=%s",
        request_id,
        chat.model,
        len(prompt),
        max_tokens,
        bool(chat.stream),
    )
    stream = engine.submit(generation)
    if chat.stream:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        interval = settings.stream_interval_ms / 1000
        events = _stream_chunks(stream, request_id, chat.model, include_usage, interval)
        return sse.event_stream(events, headers, settings.drain_timeout_s)
    return await _complete(request, stream, request_id, chat.model, headers)


async def _stream_chunks(
    stream: RequestStream, request_id: str, model: str, include_usage: bool, interval_s: float
) -> AsyncIterator[dict[str, str]]:
    created = int(time.time())

    def frame(delta: dict[str, Any] | None, **fields: Any) -> dict[str, str]:
        return sse.data(
            chunk(request_id, model, created, delta, include_usage=include_usage, **fields)
        )

    ended = False
    try:
        yield frame({"role": "assistant", "content": ""})
        async for event in stream.events(interval_s):
            if isinstance(event, TokenEvent):
                if event.text:
                    yield frame({"content": event.text})
            elif isinstance(event, FinishEvent):
                ended = True
                yield frame({}, finish_reason=event.reason)
                if include_usage:
                    usage = usage_body(event.usage.prompt_tokens, event.usage.completion_tokens)
                    yield frame(None, usage=usage)
            else:
                ended = True
                logger.error("%s failed in stream: %s", request_id, event.error)
                yield sse.data(from_engine_error(event.error).body())
        yield sse.done()
    finally:
        # Runs on normal end, client disconnect (CancelledError/GeneratorExit) and shutdown alike.
        if not ended:
            stream.cancel()
            logger.info("%s stream closed by client; cancelling", request_id)


async def _complete(
    request: Request, stream: RequestStream, request_id: str, model: str, headers: dict[str, str]
) -> Response:
    collector = asyncio.ensure_future(_collect(stream))
    disconnect = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({collector, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        if not collector.done():
            # The client went away (or we were cancelled): stop the sequence, answer nobody.
            stream.cancel()
            collector.cancel()
            logger.info("%s client disconnected; cancelling", request_id)
    if not collector.done() or collector.cancelled():
        return Response(status_code=499)
    text, finish = collector.result()
    if isinstance(finish, ErrorEvent):
        error = from_engine_error(finish.error)
        return JSONResponse(error.body(), status_code=error.status, headers=headers)
    body = completion_response(
        request_id,
        model,
        text,
        finish.reason,
        finish.usage.prompt_tokens,
        finish.usage.completion_tokens,
    )
    return JSONResponse(body, headers=headers)


async def _collect(stream: RequestStream) -> tuple[str, FinishEvent | ErrorEvent]:
    parts: list[str] = []
    async for event in stream:
        if isinstance(event, TokenEvent):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise RuntimeError("stream ended without a finish event")


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

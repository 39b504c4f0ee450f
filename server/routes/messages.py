"""Anthropic's Messages API: `POST /v1/messages` (streamed or not; also as `?beta=true`, which
Claude Code sends) and `POST /v1/messages/count_tokens`.

A front end over the chat path: the request becomes a `ChatCompletionRequest` and runs through
`prepare_chat` (limits, template, grammar, sampling defaults; `max_tokens` clamped to the room
left in the context, as Anthropic clients send 32k–128k whatever the model), the same engine
batch, and `ChoiceOutput` for reasoning and tool calls; `MessageBlocks` turns that into content
blocks. Errors on these routes are Anthropic-shaped (server/errors.py); before the first byte
they are plain statuses, after it an `error` event that ends the stream (no `message_stop`
then). A client that goes away cancels its sequence, streamed or not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from sse_starlette import ServerSentEvent

from engines.types import AdmittedEvent, ErrorEvent, Event, FinishEvent, TokenEvent
from server import sse
from server.body import read_json_object, validate
from server.chat_output import ChoiceOutput
from server.chat_pipeline import PreparedChat, count_prompt_tokens, errors_named, prepare_chat
from server.deps import MetricsDep, PoolDep, SettingsDep
from server.errors import (
    APIError,
    anthropic_error_body,
    from_engine_error,
    loc_to_param,
)
from server.generation import EventSource
from server.message_blocks import MessageBlocks, assembled
from server.schemas.anthropic import (
    BLOCK_TYPES,
    IGNORED_FIELDS,
    CountTokensRequest,
    MessagesRequest,
)
from server.schemas.chat import ChatCompletionRequest
from server.schemas.common import documented_body, response_headers
from server.serving import cancel_on_close, collected_whole
from server.validation_messages import pydantic_message

logger = logging.getLogger(__name__)
router = APIRouter()
M = TypeVar("M", bound=BaseModel)

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
# The chat request's fields as a Messages request names them, for errors.
CHAT_PARAMS = {
    "stop": "stop_sequences",
    "max_completion_tokens": "max_tokens",
    "response_format": "output_config.format",
    "response_format.json_schema": "output_config.format",
    "response_format.json_schema.schema": "output_config.format.schema",
}
# The same, for a request that gave its format as the structured-outputs beta's `output_format`.
BETA_FORMAT_PARAMS = {
    **CHAT_PARAMS,
    "response_format": "output_format",
    "response_format.json_schema": "output_format",
    "response_format.json_schema.schema": "output_format.schema",
}


@router.post("/v1/messages", openapi_extra=documented_body(MessagesRequest))
async def create_message(
    request: Request, settings: SettingsDep, pool: PoolDep, metrics: MetricsDep
) -> Response:
    body = await read_json_object(request, settings.max_body_bytes)
    message = _validated(MessagesRequest, body)
    names = BETA_FORMAT_PARAMS if message.output_format else CHAT_PARAMS
    with errors_named(names, message.chat_paths):
        chat = validate(ChatCompletionRequest, message.chat_body())
        prepared = await prepare_chat(
            pool,
            settings,
            chat,
            f"msg_{uuid.uuid4().hex}",
            clamp_max_tokens=True,
            deferred=message.deferred_tools(),
        )
    headers = response_headers(prepared.request_id, body, MessagesRequest, IGNORED_FIELDS)
    # A stream's `message_start` reports the prefix cache's reads, known at admission.
    generation = dataclasses.replace(prepared.generation, report_admission=bool(message.stream))
    stream = metrics.observe(prepared.engine.submit(generation), prepared.engine.name)
    blocks = MessageBlocks(message.thinking_shown())
    if message.stream:
        interval = settings.stream_interval_ms / 1000
        admission_wait = settings.keepalive_interval_s / 2
        frames = _stream_events(stream, prepared, message.model, blocks, interval, admission_wait)
        guarded = cancel_on_close(request, frames, [stream], prepared.request_id)
        return sse.event_stream(guarded, headers, settings, keepalive=_ping)
    collected = await collected_whole(
        request, stream, prepared.request_id, headers, _anthropic_body
    )
    if isinstance(collected, Response):
        return collected
    choice = collected.choices[0]
    output = prepared.output_for()
    events = blocks.feed(output.feed(choice.text)) + blocks.feed(output.finish()) + blocks.finish()
    usage = usage_body(collected.prompt_tokens, choice.completion_tokens, collected.cached_tokens)
    reply = message_body(prepared.request_id, message.model, assembled(events), usage)
    reply["stop_reason"] = _stop_reason(choice.finish_reason, choice.stop_sequence, output)
    reply["stop_sequence"] = choice.stop_sequence
    return JSONResponse(reply, headers=headers)


@router.post("/v1/messages/count_tokens", openapi_extra=documented_body(CountTokensRequest))
async def count_tokens(request: Request, settings: SettingsDep, pool: PoolDep) -> dict[str, int]:
    """The prompt's length in tokens as `/v1/messages` would render it (template and tools;
    deferred tools where a `tool_reference` loads them, not in the tools block)."""
    body = await read_json_object(request, settings.max_body_bytes)
    counted = _validated(CountTokensRequest, body)
    names = BETA_FORMAT_PARAMS if counted.output_format else CHAT_PARAMS
    with errors_named(names, counted.chat_paths):
        chat = validate(ChatCompletionRequest, counted.chat_body())
        tokens = await count_prompt_tokens(pool, chat, deferred=counted.deferred_tools())
        return {"input_tokens": tokens}


def message_body(
    message_id: str, model: str, content: list[dict[str, Any]], usage: dict[str, Any]
) -> dict[str, Any]:
    """A `message` object (spec `Message`); the stop fields are set by the caller."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }


def usage_body(prompt_tokens: int, output_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """Anthropic's usage: `input_tokens` are the prompt tokens not read from the prefix cache,
    `cache_read_input_tokens` the rest (their sum is the prompt)."""
    return {
        "input_tokens": prompt_tokens - cached_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached_tokens,
    }


async def _stream_events(
    stream: EventSource,
    prepared: PreparedChat,
    model: str,
    blocks: MessageBlocks,
    interval_s: float,
    admission_wait_s: float,
) -> AsyncIterator[bytes | sse.Last]:
    """The stream's frames. `message_start` waits for the engine to admit the request (its
    `AdmittedEvent` says how much of the prompt the prefix cache serves: Anthropic reports that
    there) at most `admission_wait_s`, half a keep-alive interval, so it is still the first
    frame, before any `ping`; a request not admitted by then (queued behind a full batch) gets
    the prompt counted as input, and `message_delta` says what the cache served."""
    request_id = prepared.request_id
    output: ChoiceOutput = prepared.output_for()
    events = stream.events(interval_s)
    # A task, not wait_for: cancelling a pending `anext` would close the generator.
    first = asyncio.ensure_future(anext(events, None))
    try:
        await asyncio.wait({first}, timeout=admission_wait_s)
        admitted = first.result() if first.done() and first.exception() is None else None
        if isinstance(admitted, AdmittedEvent):
            usage = usage_body(admitted.prompt_tokens, 0, admitted.cached_tokens)
        else:
            usage = usage_body(len(prepared.generation.prompt_tokens), 0, 0)
        start = message_body(request_id, model, [], usage)
        yield sse.event("message_start", {"type": "message_start", "message": start})
        async for frame in _frames(_after(first, events), prepared, output, blocks):
            yield frame
    finally:
        first.cancel()  # the client left before the first event came: stop waiting for it


async def _after(
    first: asyncio.Future[Event | None], rest: AsyncIterator[Event]
) -> AsyncIterator[Event]:
    """The first event (unless it was the admission, or the end), then the rest."""
    event = await first
    if event is not None and not isinstance(event, AdmittedEvent):
        yield event
    async for event in rest:
        yield event


async def _frames(
    events: AsyncIterator[Event],
    prepared: PreparedChat,
    output: ChoiceOutput,
    blocks: MessageBlocks,
) -> AsyncIterator[bytes | sse.Last]:
    """The frames after `message_start`, to `message_stop` or an `error` event."""
    request_id = prepared.request_id
    block_frame = _BlockFrames()
    # The stream ends with its last frame (`sse.Last`: no keep-alive `ping` after it).
    async for event in events:
        if isinstance(event, TokenEvent):
            for block_event in blocks.feed(output.feed(event.text)):
                yield block_frame(block_event)
        elif isinstance(event, FinishEvent):
            for block_event in blocks.feed(output.finish()) + blocks.finish():
                yield block_frame(block_event)
            yield _framed(_message_delta(event, output))
            yield sse.Last(_framed({"type": "message_stop"}))
            return
        elif isinstance(event, ErrorEvent):
            logger.error("%s failed in stream: %s", request_id, event.error)
            error = from_engine_error(event.error)
            yield sse.Last(sse.event("error", anthropic_error_body(error.status, error.message)))
            return


def _message_delta(finish: FinishEvent, output: ChoiceOutput) -> dict[str, Any]:
    usage = finish.usage
    return {
        "type": "message_delta",
        "delta": {
            "stop_reason": _stop_reason(finish.reason, finish.stop_sequence, output),
            "stop_sequence": finish.stop_sequence,
        },
        "usage": usage_body(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens),
    }


def _stop_reason(reason: str, stop_sequence: str | None, output: ChoiceOutput) -> str:
    """A stop sequence that ended the output names the reason even after a call began (one cut
    inside its arguments never finished; Anthropic sets `stop_sequence` only with this reason).
    `tool_use` only where every call's arguments are whole (chat_output.finish_reason): one cut
    by the end of sequence is `end_turn`, not a call for the agent to run."""
    if stop_sequence is not None:
        return "stop_sequence"
    if output.finish_reason(reason) == "tool_calls":
        return "tool_use"
    return STOP_REASONS.get(reason, "end_turn")


def _anthropic_body(error: APIError) -> dict[str, object]:
    return anthropic_error_body(error.status, error.message)


def _framed(payload: dict[str, Any]) -> bytes:
    return sse.event(payload["type"], payload)


# The string of each `content_block_delta` kind that carries the model's output.
_DELTA_TEXT = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}


class _BlockFrames:
    """The frames of block events. A block's deltas (most of a stream's frames) come from one
    `sse.Template` per block and delta kind, made from the first such delta with its text as
    the slot, so they are the bytes `_framed` writes; a delta holds no client string, so a
    Template can always be made."""

    def __init__(self) -> None:
        self._templates: dict[tuple[int, str], sse.Template] = {}

    def __call__(self, event: dict[str, Any]) -> bytes:
        if event["type"] != "content_block_delta":
            return _framed(event)
        delta = event["delta"]
        field = _DELTA_TEXT.get(delta["type"])
        if field is None:
            return _framed(event)
        key = (event["index"], field)
        template = self._templates.get(key)
        if template is None:
            payload = {**event, "delta": {**delta, field: sse.SLOT}}
            template = self._templates[key] = sse.Template(payload, "content_block_delta")
        return template(delta[field])


def _ping() -> ServerSentEvent:
    """Anthropic's keep-alive, sent while nothing else is (e.g. while a long prompt prefills)."""
    return ServerSentEvent(event="ping", data=json.dumps({"type": "ping"}))


def _validated(model: type[M], body: dict[str, Any]) -> M:
    """Validate into `model`; the first error becomes a 400 naming its field, as
    `messages[0].content[1].input` (without the block type pydantic's location carries)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        # The deepest error: for a union (text or blocks) it is the branch that came closest.
        error = max(exc.errors(include_url=False), key=lambda e: len(e["loc"]))
        loc = list(error["loc"])
        kept = [
            item
            for i, item in enumerate(loc)
            if not (item in BLOCK_TYPES and 0 < i < len(loc) - 1 and isinstance(loc[i - 1], int))
        ]
        param = loc_to_param(kept)
        message = pydantic_message(error)
        if param:
            message = f"Invalid value for '{param}': {message}"
        raise APIError(400, message, param=param, code="invalid_value") from None

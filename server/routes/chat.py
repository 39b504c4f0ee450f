"""`POST /v1/chat/completions`, streamed (SSE) and not.

Everything that can be known before the first byte — body, schema, limits, model, template,
context length — is checked first and answered as a plain 4xx; only failures after the headers
went out become an in-stream error event. A client that goes away cancels its sequences, streamed
or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from engines.llm.constrain import json_schema_grammar, tool_call_grammar
from engines.llm.reasoning import THINK_OPEN
from engines.types import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent
from server import logs, sse
from server.body import read_json_object, validate
from server.chat_output import ChoiceOutput, collected_message
from server.errors import APIError, from_engine_error
from server.generation import EventSource, check_limits, collect, unless_disconnected
from server.schemas.chat import (
    IGNORED_FIELDS,
    ChatCompletionRequest,
    chunk,
    completion_response,
    delta_choice,
    message_choice,
)
from server.schemas.common import documented_body, response_headers, usage_body

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=documented_body(ChatCompletionRequest))
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
    check_limits(chat, settings.max_stop_sequences, settings.max_n)
    check_chat_limits(chat, settings.max_messages, settings.max_schema_bytes)
    logprobs = chat.logprobs_count()
    if logprobs == -1:
        raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
    tools = [tool.model_dump(exclude_none=True) for tool in chat.tools_in_play()]
    grammar, grammar_param = output_grammar(chat, tools)
    engine = await pool.acquire(chat.model)
    if grammar is not None:
        # Compiling checks the grammar against the tokenizer (no MLX; the first one builds
        # llguidance's tokenizer, ~0.5 s): off the event loop.
        await asyncio.to_thread(engine.check_grammar, grammar, grammar_param)
    messages = [message.model_dump(exclude_none=True) for message in chat.messages]
    prompt = engine.encode_chat(messages, tools, chat.template_kwargs())
    reasoning = bool(engine.info and engine.info.reasoning)
    think_opened = reasoning and engine.decode(prompt[-8:]).rstrip().endswith(THINK_OPEN)

    tool_names = frozenset(tool["function"]["name"] for tool in tools)

    def output_for() -> ChoiceOutput:
        return ChoiceOutput(reasoning, think_opened, tool_names)

    max_tokens = engine.check_fits(len(prompt), chat.requested_max_tokens())

    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    logs.request_id.set(request_id)  # this id, not the middleware's, from here on
    generation = GenerationRequest(
        request_id,
        prompt,
        max_tokens,
        chat.sampling(pool.sampling_defaults(chat.model)),
        chat.stop_sequences(),
        n=chat.choices,
        logprobs=logprobs,
        grammar=grammar,
    )
    headers = response_headers(request_id, body, ChatCompletionRequest, IGNORED_FIELDS)
    logger.info(
        "%s chat model=%r prompt_tokens=%d max_tokens=%d n=%d stream=%s",
        request_id,
        chat.model,
        len(prompt),
        max_tokens,
        chat.choices,
        bool(chat.stream),
    )
    stream = request.app.state.metrics.observe(engine.submit(generation), chat.model)
    if chat.stream:
        interval = settings.stream_interval_ms / 1000
        outputs = [output_for() for _ in range(generation.n)]
        events = _stream_chunks(
            stream, generation, chat.model, chat.include_usage, interval, outputs
        )
        return sse.event_stream(events, headers, settings)
    collected = await unless_disconnected(request, collect(stream), [stream])
    if collected is None:
        logger.info("%s client disconnected; cancelled", request_id)
        return Response(status_code=499)
    if collected.error is not None:
        error = from_engine_error(collected.error)
        return JSONResponse(
            error.body(), status_code=error.status, headers={**headers, **error.headers}
        )
    choices = []
    for index, choice in sorted(collected.choices.items()):
        message = collected_message(output_for(), choice.text)
        reason = choice.finish_reason
        if message.get("tool_calls") and reason == "stop":
            reason = "tool_calls"
        choice_logprobs = None if logprobs is None else choice.logprobs
        choices.append(message_choice(index, message, reason, choice_logprobs))
    completion_tokens = sum(c.completion_tokens for c in collected.choices.values())
    usage = usage_body(collected.prompt_tokens, completion_tokens, collected.cached_tokens)
    return JSONResponse(
        completion_response(request_id, chat.model, choices, usage), headers=headers
    )


async def _stream_chunks(
    stream: EventSource,
    generation: GenerationRequest,
    model: str,
    include_usage: bool,
    interval_s: float,
    outputs: list[ChoiceOutput],
) -> AsyncIterator[dict[str, str]]:
    created = int(time.time())
    with_logprobs = generation.logprobs is not None

    def frame(choice: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> dict[str, str]:
        body = chunk(generation.request_id, model, created, choice, usage, include_usage)
        return sse.data(body)

    ended = False
    completion_tokens = cached_tokens = 0
    try:
        for index in range(generation.n):
            yield frame(delta_choice(index, {"role": "assistant", "content": ""}))
        async for event in stream.events(interval_s):
            if isinstance(event, TokenEvent):
                logprobs = event.logprobs if with_logprobs else None
                deltas = outputs[event.index].feed(event.text)
                if not deltas and logprobs:
                    deltas = [{"content": ""}]
                for delta in deltas:
                    yield frame(delta_choice(event.index, delta, None, logprobs))
                    logprobs = None
            elif isinstance(event, FinishEvent):
                completion_tokens += event.usage.completion_tokens
                cached_tokens = event.usage.cached_tokens
                reason: str = event.reason
                for delta in outputs[event.index].finish():
                    yield frame(delta_choice(event.index, delta))
                if outputs[event.index].tool_calls and reason == "stop":
                    reason = "tool_calls"
                yield frame(delta_choice(event.index, {}, reason))
            elif isinstance(event, ErrorEvent):
                logger.error("%s failed in stream: %s", generation.request_id, event.error)
                yield sse.data(from_engine_error(event.error).body())
        ended = True
        if include_usage:
            prompt = len(generation.prompt_tokens)
            yield frame(None, usage_body(prompt, completion_tokens, cached_tokens))
        yield sse.done()
    finally:
        # Runs on normal end, client disconnect (CancelledError/GeneratorExit) and shutdown alike.
        if not ended:
            stream.cancel()
            logger.info("%s stream closed early; cancelling", generation.request_id)


def output_grammar(
    chat: ChatCompletionRequest, tools: list[dict[str, Any]]
) -> tuple[str | None, str]:
    """The grammar the output must follow, if any, and the param it comes from: a forced tool
    call (`tool_choice` "required" or a named function) or `response_format` JSON."""
    forced = chat.forced_tool()
    if chat.tool_choice == "required" or forced is not None:
        if not tools:
            raise APIError(400, "tool_choice requires tools", param="tools")
        if forced is not None and forced not in {t["function"]["name"] for t in tools}:
            raise APIError(
                400, f"tool_choice names an unknown function {forced!r}", param="tool_choice"
            )
        if chat.response_format is not None and chat.response_format.type != "text":
            raise APIError(
                400,
                "response_format cannot be combined with a forced tool_choice",
                param="response_format",
            )
        parallel = forced is None and chat.parallel_tool_calls is not False
        return tool_call_grammar(tools, forced, parallel), "tool_choice"
    response_format = chat.response_format
    if response_format is None or response_format.type == "text":
        return None, ""
    if response_format.type == "json_object":
        return json_schema_grammar({"type": "object"}), "response_format"
    if response_format.json_schema is None:
        raise APIError(400, "json_schema is required", param="response_format.json_schema")
    schema = response_format.json_schema.schema_ or {"type": "object"}
    return json_schema_grammar(schema), "response_format.json_schema.schema"


def check_chat_limits(
    chat: ChatCompletionRequest, max_messages: int, max_schema_bytes: int
) -> None:
    """Limits on the chat-only fields: message count, and the size of the schemas a grammar
    would be compiled from (tools' parameters, `response_format`)."""
    if len(chat.messages) > max_messages:
        raise APIError(
            400,
            f"At most {max_messages} messages are allowed, got {len(chat.messages)}",
            param="messages",
        )
    for param, value in (
        ("tools", [tool.model_dump(exclude_none=True) for tool in chat.tools or []]),
        (
            "response_format",
            chat.response_format.model_dump(by_alias=True) if chat.response_format else None,
        ),
    ):
        size = len(json.dumps(value)) if value else 0
        if size > max_schema_bytes:
            raise APIError(
                400,
                f"'{param}' is {size} bytes of JSON; the limit is {max_schema_bytes}",
                param=param,
            )

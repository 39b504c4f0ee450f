"""`POST /v1/chat/completions`, streamed (SSE) and not.

Everything that can be known before the first byte — body, schema, limits, model, template,
context length — is checked first and answered as a plain 4xx; only failures after the headers
went out become an in-stream error event. A client that goes away cancels its sequences, streamed
or not.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from engines.types import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent
from server import sse
from server.chat_output import ChoiceOutput, collected_message
from server.chat_pipeline import prepare_chat
from server.deps import Body, MetricsDep, PoolDep, SettingsDep, json_body
from server.errors import from_engine_error
from server.generation import EventSource
from server.schemas.chat import (
    IGNORED_FIELDS,
    ChatCompletionRequest,
    chunk,
    completion_response,
    delta_choice,
    message_choice,
)
from server.schemas.common import documented_body, response_headers, usage_body
from server.serving import cancel_on_close, collected_whole

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=documented_body(ChatCompletionRequest))
async def create_chat_completion(
    request: Request,
    settings: SettingsDep,
    pool: PoolDep,
    metrics: MetricsDep,
    body: Annotated[Body[ChatCompletionRequest], Depends(json_body(ChatCompletionRequest))],
) -> Response:
    chat = body.value
    prepared = await prepare_chat(pool, settings, chat, f"chatcmpl-{uuid.uuid4().hex}")
    generation, output_for = prepared.generation, prepared.output_for
    request_id = generation.request_id
    headers = response_headers(request_id, body.raw, ChatCompletionRequest, IGNORED_FIELDS)
    stream = metrics.observe(prepared.engine.submit(generation), prepared.engine.name)
    if chat.stream:
        interval = settings.stream_interval_ms / 1000
        outputs = [output_for() for _ in range(generation.n)]
        chunks = _stream_chunks(
            stream, generation, chat.model, chat.include_usage, interval, outputs
        )
        events = cancel_on_close(request, chunks, [stream], request_id)
        return sse.event_stream(events, headers, settings)
    collected = await collected_whole(request, stream, request_id, headers)
    if isinstance(collected, Response):
        return collected
    choices = []
    for index, choice in sorted(collected.choices.items()):
        output = output_for()
        message = collected_message(output, choice.text)
        reason = output.finish_reason(choice.finish_reason)
        choice_logprobs = None if generation.logprobs is None else choice.logprobs
        choices.append(message_choice(index, message, reason, choice_logprobs))
    completion_tokens = sum(c.completion_tokens for c in collected.choices.values())
    accepted = [c.accepted_prediction_tokens for c in collected.choices.values()]
    usage = usage_body(
        collected.prompt_tokens,
        completion_tokens,
        collected.cached_tokens,
        prediction_counts(generation, accepted),
    )
    return JSONResponse(
        completion_response(request_id, chat.model, choices, usage), headers=headers
    )


def prediction_counts(generation: GenerationRequest, accepted: list[int]) -> tuple[int, int] | None:
    """Usage's prediction counts over the choices (None: the request had no prediction): its
    tokens kept as drafts, and the rest of each choice's copy of it."""
    if not generation.prediction:
        return None
    total = sum(accepted)
    return total, len(generation.prediction) * len(accepted) - total


async def _stream_chunks(
    stream: EventSource,
    generation: GenerationRequest,
    model: str,
    include_usage: bool,
    interval_s: float,
    outputs: list[ChoiceOutput],
) -> AsyncIterator[bytes | sse.Last]:
    created = int(time.time())
    with_logprobs = generation.logprobs is not None

    def frame_body(
        choice: dict[str, Any] | None, usage: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return chunk(generation.request_id, model, created, choice, usage, include_usage)

    def frame(choice: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> bytes:
        return sse.data(frame_body(choice, usage))

    def content_frames(index: int) -> Callable[[str], bytes]:
        """Frames of a plain content delta (most of a stream's)."""
        return sse.templated(lambda text: frame_body(delta_choice(index, {"content": text})))

    completion_tokens = cached_tokens = 0
    accepted: list[int] = []
    content = [content_frames(index) for index in range(generation.n)]
    opened = [False] * generation.n

    def opening(index: int, delta: dict[str, Any]) -> tuple[list[bytes], dict[str, Any]]:
        """The choice's role, sent once, with its first delta as OpenAI streams it: (frames to
        send before `delta`, `delta` as sent). Text (or no output, `delta` empty) gets a
        `{"role", "content": ""}` chunk of its own; any other first delta (a tool call,
        reasoning) carries the role itself with `content: null`, so no client assembles a text
        part the reply has not (the Vercel AI SDK opens one on any non-null content; the SDKs'
        stream helpers ended a call with `content: ""` where the unstreamed reply has null)."""
        if opened[index]:
            return [], delta
        opened[index] = True
        if delta and "content" not in delta:
            return [], {"role": "assistant", "content": None, **delta}
        return [frame(delta_choice(index, {"role": "assistant", "content": ""}))], delta

    async for event in stream.events(interval_s):
        if isinstance(event, TokenEvent):
            logprobs = event.logprobs if with_logprobs else None
            deltas = outputs[event.index].feed(event.text)
            if not deltas and logprobs:
                deltas = [{"content": ""}]
            for delta in deltas:
                before, delta = opening(event.index, delta)
                for role_frame in before:
                    yield role_frame
                if logprobs is None and len(delta) == 1 and "content" in delta:
                    yield content[event.index](delta["content"])
                else:
                    yield frame(delta_choice(event.index, delta, None, logprobs))
                logprobs = None
        elif isinstance(event, FinishEvent):
            completion_tokens += event.usage.completion_tokens
            cached_tokens = event.usage.cached_tokens
            accepted.append(event.usage.accepted_prediction_tokens)
            for delta in outputs[event.index].finish():
                before, delta = opening(event.index, delta)
                for role_frame in before:
                    yield role_frame
                yield frame(delta_choice(event.index, delta))
            for role_frame in opening(event.index, {})[0]:  # a choice that wrote nothing
                yield role_frame
            reason = outputs[event.index].finish_reason(event.reason)
            yield frame(delta_choice(event.index, {}, reason))
        elif isinstance(event, ErrorEvent):
            logger.error("%s failed in stream: %s", generation.request_id, event.error)
            yield sse.data(from_engine_error(event.error).body())
    if include_usage:
        prompt = len(generation.prompt_tokens)
        predicted = prediction_counts(generation, accepted)
        yield frame(None, usage_body(prompt, completion_tokens, cached_tokens, predicted))
    yield sse.Last(sse.done())

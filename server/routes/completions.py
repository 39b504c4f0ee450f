"""`POST /v1/completions`: raw prompts (strings or token ids, one or many), `suffix` for
fill-in-the-middle, `echo`, legacy `logprobs`, n, streaming.

Choice indices follow OpenAI: prompt p's choice i has index p * n + i.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from engines.kinds import CHAT, ChatEngine
from engines.types import (
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    PromptEvent,
    TokenEvent,
    TokenLogprob,
)
from server import logs, sse
from server.deps import Body, MetricsDep, PoolDep, SettingsDep, json_body
from server.errors import APIError, from_engine_error
from server.generation import EventSource, check_limits, collect, merge
from server.schemas.common import documented_body, response_headers, usage_body
from server.schemas.completions import (
    IGNORED_FIELDS,
    CompletionRequest,
    completion_body,
    legacy_logprobs,
    text_choice,
)
from server.serving import cancel_on_close, collected_or_gone, error_response

logger = logging.getLogger(__name__)
router = APIRouter()


def _encode(
    engine: ChatEngine, completion: CompletionRequest, prompt: str | list[int]
) -> tuple[str, list[int]]:
    """(prompt text, prompt tokens) for one prompt."""
    if isinstance(prompt, list):
        if completion.suffix is not None:
            raise APIError(400, "suffix needs a text prompt, not token ids", param="suffix")
        vocab = engine.vocab_size
        if any(not 0 <= token < vocab for token in prompt):
            raise APIError(400, f"prompt token ids must be in 0..{vocab - 1}", param="prompt")
        return engine.decode(prompt), prompt
    if completion.suffix is not None:
        return prompt, engine.encode_fim(prompt, completion.suffix)
    return prompt, engine.encode_text(prompt)


@router.post("/v1/completions", openapi_extra=documented_body(CompletionRequest))
async def create_completion(
    request: Request,
    settings: SettingsDep,
    pool: PoolDep,
    metrics: MetricsDep,
    body: Annotated[Body[CompletionRequest], Depends(json_body(CompletionRequest))],
) -> Response:
    """Long on purpose: every check that can answer a plain 4xx runs here, in order, before the
    first prompt is submitted (one function keeps that order visible)."""
    completion = body.value
    check_limits(completion, settings.max_stop_sequences, settings.max_n)
    if completion.best_of not in (None, completion.choices):
        raise APIError(
            400,
            "best_of other than n is not supported; use n",
            param="best_of",
            code="unsupported_parameter",
        )
    if completion.echo and completion.suffix is not None:
        raise APIError(400, "echo cannot be combined with suffix", param="echo")
    prompts = completion.prompts()
    if (total := len(prompts) * completion.choices) > settings.max_n:
        raise APIError(
            400, f"prompts × n must be at most {settings.max_n}, got {total}", param="prompt"
        )
    engine = await pool.acquire(completion.model, CHAT)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    logs.request_id.set(request_id)  # this id, not the middleware's, from here on
    texts: list[str] = []
    generations: list[GenerationRequest] = []
    for position, prompt in enumerate(prompts):
        # Off the event loop (tokenizer only, no MLX): a long prompt takes seconds.
        text, tokens = await asyncio.to_thread(_encode, engine, completion, prompt)
        max_tokens = engine.check_fits(len(tokens), completion.max_tokens, param="prompt")
        texts.append(text)
        generations.append(
            GenerationRequest(
                f"{request_id}-{position}",
                tokens,
                max_tokens,
                completion.sampling(pool.sampling_defaults(completion.model)),
                completion.stop_sequences(),
                n=completion.choices,
                logprobs=completion.logprobs,
                prompt_logprobs=bool(completion.echo) and completion.logprobs is not None,
                speculative=completion.speculative,
            )
        )
    headers = response_headers(request_id, body.raw, CompletionRequest, IGNORED_FIELDS)
    logger.info(
        "%s completion model=%r prompts=%d n=%d stream=%s",
        request_id,
        completion.model,
        len(prompts),
        completion.choices,
        bool(completion.stream),
    )
    streams: list[EventSource] = [
        metrics.observe(engine.submit(g), engine.name) for g in generations
    ]
    if completion.stream:
        chunks = _stream_chunks(request_id, completion, texts, generations, streams, settings)
        events = cancel_on_close(request, chunks, streams, request_id)
        return sse.event_stream(events, headers, settings)
    return await _complete(request, request_id, completion, texts, streams, headers)


async def _complete(
    request: Request,
    request_id: str,
    completion: CompletionRequest,
    texts: list[str],
    streams: list[EventSource],
    headers: dict[str, str],
) -> Response:
    async def collect_all() -> list[Any]:
        return [await collect(stream) for stream in streams]

    results = await collected_or_gone(request, collect_all(), streams, request_id)
    if isinstance(results, Response):
        return results
    choices = []
    prompt_tokens = completion_tokens = cached_tokens = 0
    for position, result in enumerate(results):
        if result.error is not None:
            return error_response(result.error, headers)
        prompt_tokens += result.prompt_tokens
        cached_tokens += result.cached_tokens
        for index, choice in sorted(result.choices.items()):
            completion_tokens += choice.completion_tokens
            prefix = texts[position] if completion.echo else ""
            logprobs = None
            if completion.logprobs is not None:
                entries = (result.prompt_logprobs if completion.echo else []) + choice.logprobs
                logprobs = legacy_logprobs(entries)
            number = position * completion.choices + index
            choices.append(
                text_choice(number, prefix + choice.text, choice.finish_reason, logprobs)
            )
    usage = usage_body(prompt_tokens, completion_tokens, cached_tokens)
    body = completion_body(request_id, completion.model, choices, usage)
    return JSONResponse(body, headers=headers)


async def _stream_chunks(
    request_id: str,
    completion: CompletionRequest,
    texts: list[str],
    generations: list[GenerationRequest],
    streams: list[EventSource],
    settings: Any,
) -> AsyncIterator[bytes | sse.Last]:
    created = int(time.time())
    n = completion.choices
    with_logprobs = completion.logprobs is not None
    offsets: dict[int, int] = {}  # text_offset reached by each choice

    def frame(choice: dict[str, Any] | None, usage: dict[str, Any] | None = None) -> bytes:
        choices = [] if choice is None else [choice]
        return sse.data(completion_body(request_id, completion.model, choices, usage, created))

    def text_frames(number: int) -> Callable[[str], bytes]:
        """Frames of choice `number`'s text without logprobs (most of a stream's)."""
        return sse.templated(
            lambda text: completion_body(
                request_id, completion.model, [text_choice(number, text, None, None)], None, created
            )
        )

    plain: dict[int, Callable[[str], bytes]] = {}  # per choice number, made on first use

    def text_frame(number: int, text: str, entries: list[TokenLogprob]) -> bytes:
        if not with_logprobs:
            if number not in plain:
                plain[number] = text_frames(number)
            return plain[number](text)
        logprobs = legacy_logprobs(entries, offsets.get(number, 0))
        offsets[number] = offsets.get(number, 0) + len(text)
        return frame(text_choice(number, text, None, logprobs))

    completion_tokens = 0
    cached: dict[int, int] = {}  # prompt position → its prompt tokens served from the cache
    if completion.echo and not with_logprobs:  # with logprobs the PromptEvent carries it
        for position, text in enumerate(texts):
            for index in range(n):
                yield text_frame(position * n + index, text, [])
    async for position, event in merge(streams, settings.stream_interval_ms / 1000):
        if isinstance(event, PromptEvent):
            for index in range(n):
                yield text_frame(position * n + index, texts[position], event.logprobs)
        elif isinstance(event, TokenEvent):
            if event.text or event.logprobs:
                yield text_frame(position * n + event.index, event.text, event.logprobs)
        elif isinstance(event, FinishEvent):
            completion_tokens += event.usage.completion_tokens
            cached[position] = event.usage.cached_tokens
            yield frame(text_choice(position * n + event.index, "", event.reason, None))
        elif isinstance(event, ErrorEvent):
            logger.error("%s failed in stream: %s", request_id, event.error)
            yield sse.data(from_engine_error(event.error).body())
            break
    if completion.include_usage:
        prompt_tokens = sum(len(g.prompt_tokens) for g in generations)
        usage = usage_body(prompt_tokens, completion_tokens, sum(cached.values()))
        yield frame(None, usage)
    yield sse.Last(sse.done())

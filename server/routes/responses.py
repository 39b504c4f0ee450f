"""`POST /v1/responses` (streamed and not), `GET` and `DELETE /v1/responses/{id}`,
`GET /v1/responses/{id}/input_items`, `POST /v1/responses/input_tokens`,
`POST /v1/responses/compact` (server/responses_compaction.py).

A front end over the chat path: the request becomes a chat request (server/responses_input.py),
runs through `prepare_chat` and the same engine batch as chat completions, and its chat deltas
become Responses items and events (server/responses_output.py).

Invariants:
- Everything checkable before the first byte (items, tools, limits, model, context) is a plain
  OpenAI-shaped 4xx; an unknown `previous_response_id` is a 404.
- A stream starts with `response.created` and `response.in_progress` and ends with exactly one of
  `response.completed`, `response.incomplete` (`max_output_tokens` reached) or `response.failed`
  (which carries the output produced so far); every event has its `event:` line and a
  `sequence_number` counting from 0. A client that goes away cancels the generation.
- A response is stored (when `store` is not false) before its last event is sent, so a `GET`
  right after the stream ends finds it; its conversation's items all carry ids, which
  `GET /v1/responses/{id}/input_items` pages through (server/response_store_items.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from engines.pool import EnginePool
from engines.types import ErrorEvent, FinishEvent, TokenEvent, TokenLogprob
from engines.types import Event as EngineEvent
from server import sse
from server.chat_output import ChoiceOutput
from server.chat_pipeline import PreparedChat, count_prompt_tokens, errors_named, prepare_chat
from server.deps import Body, MetricsDep, PoolDep, ResponseStoreDep, SettingsDep, json_body
from server.errors import APIError, from_engine_error
from server.generation import CollectedChoice, EventSource
from server.heartbeat import with_heartbeat
from server.response_references import resolved
from server.response_store import ResponseStore
from server.response_store_items import ListQuery, input_items, item_page, with_ids
from server.responses_compaction import SUMMARY_MAX_TOKENS, compaction_item, prompt_message
from server.responses_input import chat_paths, to_chat
from server.responses_output import Event, ItemStatus, OutputItems, new_id
from server.responses_truncation import TOO_LONG, fitted
from server.schemas.chat import ChatCompletionRequest, logprob_content
from server.schemas.common import documented_body, response_headers
from server.schemas.responses import (
    COMPACT_IGNORED_FIELDS,
    CompactRequest,
    FunctionTool,
    InputItem,
    InputTokensRequest,
    ResponseCreateRequest,
    items_of,
    parse_items,
)
from server.serving import cancel_on_close, collected_whole
from server.settings import Settings

logger = logging.getLogger(__name__)
router = APIRouter()

# A chat request's params as the Responses request names them, for errors.
CHAT_PARAMS = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "response_format.json_schema": "text.format",
    "response_format.json_schema.schema": "text.format.schema",
}


@dataclass(frozen=True)
class Draft:
    """What a response object repeats of its request, and its identity."""

    request: ResponseCreateRequest
    functions: list[FunctionTool]
    response_id: str
    created_at: int

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A `response` object (spec `Response`)."""
        request = self.request
        choice = request.tool_choice
        text = request.text.model_dump(by_alias=True, exclude_none=True) if request.text else {}
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "model": request.model,
            "output": output,
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": request.previous_response_id,
            "reasoning": request.reasoning.model_dump(exclude_none=True)
            if request.reasoning
            else None,
            "store": request.store is not False,
            "temperature": request.temperature,
            "text": {"format": {"type": "text"}, **text},
            "tool_choice": (choice or "auto")
            if isinstance(choice, str | None)
            else choice.model_dump(),
            "tools": [f.model_dump(exclude_none=True) for f in self.functions],
            "top_p": request.top_p,
            "truncation": request.truncation or "disabled",
            "usage": usage,
            "metadata": request.metadata or {},
        }


def usage_body(prompt_tokens: int, output_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """Responses `usage`; `cached_tokens` counts prompt tokens served from the prefix cache."""
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + output_tokens,
    }


@router.post("/v1/responses", openapi_extra=documented_body(ResponseCreateRequest))
async def create_response(
    request: Request,
    settings: SettingsDep,
    pool: PoolDep,
    metrics: MetricsDep,
    store: ResponseStoreDep,
    body: Annotated[Body[ResponseCreateRequest], Depends(json_body(ResponseCreateRequest))],
) -> Response:
    parsed = body.value
    if (field := parsed.unsupported_field()) is not None:
        raise APIError(
            400, f"'{field}' is not supported by this server yet", param=field,
            code="unsupported_parameter",
        )  # fmt: skip
    history = await _history(store, parsed.previous_response_id)
    items = history + await _input_items(store, parsed.input)
    functions = parsed.function_tools()
    draft = Draft(parsed, functions, new_id("resp"), int(time.time()))

    async def prepared_for(selected: list[int]) -> PreparedChat:
        """The chat request of these items of the conversation (all, or a truncated one)."""
        kept = [items[k] for k in selected]
        chat = to_chat(parsed, kept, functions)
        paths = partial(chat_paths, parsed.instructions, kept, len(history), selected)
        return await _prepare(pool, settings, chat, draft.response_id, paths)

    if parsed.truncation == "auto":
        prepared = await fitted(items, prepared_for)
    else:
        prepared = await prepared_for(list(range(len(items))))
    ignored = parsed.ignored_fields()
    headers = response_headers(draft.response_id, body.raw, ResponseCreateRequest, ignored)
    submitted = prepared.engine.submit(prepared.generation)
    stream = metrics.observe(submitted, prepared.engine.name)
    conversation = [item.model_dump(by_alias=True, exclude_none=True) for item in items]
    summary = parsed.reasoning is not None and parsed.reasoning.wants_summary()
    items_out = OutputItems(parsed.namespaces(), summary)
    run = _Run(draft, prepared, items_out, conversation, store)
    if parsed.stream:
        interval = settings.stream_interval_ms / 1000
        heartbeat = settings.keepalive_interval_s
        frames = run.events(stream, interval, heartbeat)
        return sse.event_stream(
            cancel_on_close(request, frames, [stream], draft.response_id), headers, settings
        )
    collected = await collected_whole(request, stream, draft.response_id, headers)
    if isinstance(collected, Response):
        return collected
    choice = collected.choices.get(0)
    output = prepared.output_for()
    for piece, logprobs in _pieces(choice):
        run.items.offer(logprob_content(logprobs))
        for delta in output.feed(piece):
            run.items.feed(delta)
    for delta in output.finish():
        run.items.feed(delta)
    status: ItemStatus = (
        "incomplete"
        if choice and output.finish_reason(choice.finish_reason) == "length"
        else "completed"
    )
    run.items.finish(status)
    usage = usage_body(
        collected.prompt_tokens, choice.completion_tokens if choice else 0, collected.cached_tokens
    )
    return JSONResponse(await run.final(status, usage), headers=headers)


@router.post("/v1/responses/input_tokens", openapi_extra=documented_body(InputTokensRequest))
async def count_input_tokens(
    pool: PoolDep,
    store: ResponseStoreDep,
    body: Annotated[Body[InputTokensRequest], Depends(json_body(InputTokensRequest))],
) -> dict[str, Any]:
    """The prompt's length in tokens as `POST /v1/responses` would render it: the conversation
    it continues, instructions, tools, template (spec `TokenCountsResource`)."""
    parsed = body.value
    model = parsed.model or pool.default_model
    if model is None:
        raise APIError(400, "model is required: this server has no default model", param="model")
    history = await _history(store, parsed.previous_response_id)
    items = history + await _input_items(store, parsed.input)
    request, functions = parsed.model_copy(update={"model": model}), parsed.function_tools()

    async def counted(selected: list[int], fit: bool = False) -> int:
        """The prompt of these items of the conversation (`fit`: checked against the context
        as create checks it, for `truncation: "auto"`)."""
        kept = [items[k] for k in selected]
        paths = partial(chat_paths, parsed.instructions, kept, len(history), selected)
        with errors_named(CHAT_PARAMS, paths):
            return await count_prompt_tokens(pool, to_chat(request, kept, functions), fit)

    tokens = None
    if parsed.truncation == "auto":  # the conversation create would send, truncated
        try:
            tokens = await fitted(items, partial(counted, fit=True))
        except APIError as exc:
            if exc.code != TOO_LONG:
                raise
    if tokens is None:  # as sent (create would refuse it, too long even truncated: a 400)
        tokens = await counted(list(range(len(items))))
    return {"object": "response.input_tokens", "input_tokens": tokens}


@router.post("/v1/responses/compact", openapi_extra=documented_body(CompactRequest))
async def compact_conversation(
    request: Request,
    settings: SettingsDep,
    pool: PoolDep,
    metrics: MetricsDep,
    store: ResponseStoreDep,
    body: Annotated[Body[CompactRequest], Depends(json_body(CompactRequest))],
) -> Response:
    """The conversation as one `compaction` item holding a summary the model wrote of it
    (server/responses_compaction.py; spec `CompactResource`). Nothing is stored."""
    parsed = body.value
    model = parsed.model or pool.default_model
    if model is None:
        raise APIError(400, "model is required: this server has no default model", param="model")
    history = await _history(store, parsed.previous_response_id)
    items = history + await _input_items(store, parsed.input or [])
    if not items:
        raise APIError(400, "'input' must contain at least one item to compact", param="input")
    compaction_id = new_id("resp")
    summarize = ResponseCreateRequest.model_validate(
        {
            "model": model,
            "instructions": parsed.instructions,
            "max_output_tokens": SUMMARY_MAX_TOKENS,
        }
    )

    async def prepared_for(selected: list[int]) -> PreparedChat:
        """The summary's chat request: these items of the conversation, then the prompt. Too
        many messages for a request is too long, as too many tokens is: the oldest turns go
        (a 400 only where the last turn alone holds that many)."""
        kept = [*(items[k] for k in selected), prompt_message()]
        origin = [*selected, None]  # the prompt is no item of the request's
        paths = partial(chat_paths, parsed.instructions, kept, len(history), origin)
        chat = to_chat(summarize, kept, [])
        if len(chat.messages) > settings.max_messages:
            raise APIError(
                400,
                f"the conversation's last turn and the summary prompt make "
                f"{len(chat.messages)} messages; at most {settings.max_messages} are allowed",
                param="input",
                code=TOO_LONG,
            )
        return await _prepare(pool, settings, chat, compaction_id, paths, clamp_max_tokens=True)

    prepared = await fitted(items, prepared_for)
    headers = response_headers(compaction_id, body.raw, CompactRequest, COMPACT_IGNORED_FIELDS)
    submitted = prepared.engine.submit(prepared.generation)
    stream = metrics.observe(submitted, prepared.engine.name)
    collected = await collected_whole(request, stream, compaction_id, headers)
    if isinstance(collected, Response):
        return collected
    choice = collected.choices.get(0)
    output = prepared.output_for()
    deltas = [*output.feed(choice.text if choice else ""), *output.finish()]
    assert prepared.engine.info is not None  # loaded: it served the summary
    context_length = prepared.engine.info.context_length
    summary = "".join(delta.get("content") or "" for delta in deltas).strip()  # no reasoning
    usage = usage_body(
        collected.prompt_tokens, choice.completion_tokens if choice else 0, collected.cached_tokens
    )
    compacted = {
        "id": compaction_id,
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": [compaction_item(summary, items, context_length)],
        "usage": usage,
    }
    return JSONResponse(compacted, headers=headers)


@router.get("/v1/responses/{response_id}")
async def retrieve_response(store: ResponseStoreDep, response_id: str) -> JSONResponse:
    stored = await store.get(response_id)
    if stored is None:
        raise _not_found(response_id, "response_id")
    return JSONResponse(stored.response)


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    request: Request, store: ResponseStoreDep, response_id: str
) -> JSONResponse:
    query = ListQuery.parse(
        {name: request.query_params.getlist(name) for name in request.query_params}
    )
    stored = await store.get(response_id)
    if stored is None:
        raise _not_found(response_id, "response_id")
    items = input_items(stored.conversation, len(stored.response["output"]))
    return JSONResponse(item_page(items, query))


@router.delete("/v1/responses/{response_id}")
async def delete_response(store: ResponseStoreDep, response_id: str) -> JSONResponse:
    if not await store.delete(response_id):
        raise _not_found(response_id, "response_id")
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


def _not_found(response_id: str, param: str) -> APIError:
    return APIError(
        404, f"Response with id '{response_id}' not found.", param=param, code="response_not_found"
    )


def _pieces(choice: CollectedChoice | None) -> list[tuple[str, list[TokenLogprob]]]:
    """A finished choice's text as the stream would have fed it, each piece with its tokens'
    logprobs: token by token where it has logprobs (so they go with the text, reasoning or call
    their tokens made, as streamed), else all at once."""
    if choice is None:
        return [("", [])]
    if choice.logprobs and "".join(entry.text for entry in choice.logprobs) == choice.text:
        return [(entry.text, [entry]) for entry in choice.logprobs]
    return [(choice.text, choice.logprobs)]


async def _input_items(store: ResponseStore, raw_input: str | list[Any]) -> list[InputItem]:
    """A request's own input items, each `item_reference` replaced by the stored item it names
    (server/response_references.py), every item with an id."""
    return with_ids(items_of(await resolved(store, raw_input)))


async def _history(store: ResponseStore, previous_response_id: str | None) -> list[InputItem]:
    """The stored conversation a request continues (none without `previous_response_id`)."""
    if previous_response_id is None:
        return []
    stored = await store.get(previous_response_id)
    if stored is None:
        raise _not_found(previous_response_id, "previous_response_id")
    return parse_items(stored.conversation)


async def _prepare(
    pool: EnginePool,
    settings: Settings,
    chat: ChatCompletionRequest,
    response_id: str,
    paths: Callable[[], Mapping[str, str]],
    clamp_max_tokens: bool = False,
) -> PreparedChat:
    """`prepare_chat`, its errors naming the Responses request's fields (`paths`: its input
    items, `responses_input.chat_paths`)."""
    with errors_named(CHAT_PARAMS, paths):
        return await prepare_chat(pool, settings, chat, response_id, clamp_max_tokens)


@dataclass
class _Run:
    """One response being generated: its output items, and where it is stored when done."""

    draft: Draft
    prepared: PreparedChat
    items: OutputItems
    conversation: list[dict[str, Any]]
    store: ResponseStore
    status: ItemStatus | Literal["failed"] = "completed"
    usage: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    async def final(
        self, status: str, usage: dict[str, Any] | None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The finished response object, stored first when the request asked for it."""
        body = self.draft.body(status, self.items.output, usage, error)
        if self.draft.request.store is not False and status != "failed":
            await self.store.put(body, self.conversation + self.items.output)
        return body

    async def events(
        self, stream: EventSource, interval_s: float, heartbeat_s: float
    ) -> AsyncIterator[bytes | sse.Last]:
        """The SSE events. While nothing is sent for `heartbeat_s` (a long prefill, a tool call
        the parser holds back) `response.in_progress` is repeated: Codex's idle timeout counts
        events, not the SSE comments every stream gets as keep-alives."""
        frame = _Frames()
        in_progress = {
            "type": "response.in_progress",
            "response": self.draft.body("in_progress", []),
        }
        output = self.prepared.output_for()
        yield frame({"type": "response.created", "response": in_progress["response"]})
        yield frame(in_progress)
        async for event in with_heartbeat(stream.events(interval_s), heartbeat_s):
            # None: a silence of the engine stream, so no frame was made either: repeat at
            # once, not judged by the clock below (the marker's timer runs on the loop's clock,
            # which may lag it by a few ms: a skipped repeat doubled the gap, past Codex's limit).
            events = [in_progress] if event is None else self._item_events(event, output)
            if not events and time.monotonic() - frame.last_sent >= heartbeat_s:
                # Tokens came but made no frame (a tool call the parser holds back).
                events = [in_progress]
            for item_event in events:
                yield frame(item_event)
        final = await self.final(self.status, self.usage, self.error)
        yield sse.Last(frame({"type": f"response.{self.status}", "response": final}))

    def _item_events(self, event: EngineEvent, output: ChoiceOutput) -> list[Event]:
        """The Responses events for one engine event; a finish or an error sets the outcome."""
        events: list[Event] = []
        if isinstance(event, TokenEvent):
            self.items.offer(logprob_content(event.logprobs))
            for delta in output.feed(event.text):
                events += self.items.feed(delta)
        elif isinstance(event, FinishEvent):
            for delta in output.finish():
                events += self.items.feed(delta)
            self.status = (
                "incomplete" if output.finish_reason(event.reason) == "length" else "completed"
            )
            events += self.items.finish(self.status)
            tokens = event.usage
            self.usage = usage_body(
                tokens.prompt_tokens, tokens.completion_tokens, tokens.cached_tokens
            )
        elif isinstance(event, ErrorEvent):
            logger.error("%s failed in stream: %s", self.draft.response_id, event.error)
            self.status, self.error = "failed", _failure(event.error)
        return events


# The delta events (most of a stream's), whose `delta` is the model's output.
_DELTA_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
    }
)


class _Frames:
    """A stream's frames: each event gets the next `sequence_number` (from 0). An item's deltas
    come from one `sse.Template` per item and event type, made from the first such delta with
    its text and sequence number as the slots, so they are the bytes `sse.event` writes; a
    delta holds no client string, so a Template can always be made. A delta with logprobs is
    written whole (a Template would repeat the first delta's)."""

    def __init__(self) -> None:
        self.sequence = 0
        self.last_sent = time.monotonic()
        self._templates: dict[tuple[str, str], sse.Template] = {}

    def __call__(self, event: Event) -> bytes:
        number, kind = self.sequence, event["type"]
        self.sequence += 1
        self.last_sent = time.monotonic()
        if kind not in _DELTA_EVENTS or event.get("logprobs"):  # a Template repeats its own
            return sse.event(kind, {**event, "sequence_number": number})
        key = (kind, event["item_id"])
        template = self._templates.get(key)
        if template is None:
            payload = {**event, "delta": sse.SLOT, "sequence_number": sse.NUMBER}
            template = self._templates[key] = sse.Template(payload, kind)
        return template(event["delta"], number)


def _failure(error: Exception) -> dict[str, str]:
    """A `response.error` (its `code` is one of the spec's few)."""
    api_error = from_engine_error(error)
    code = "rate_limit_exceeded" if api_error.status == 429 else "server_error"
    return {"code": code, "message": api_error.message}

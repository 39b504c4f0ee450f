"""The chat path shared by every chat-shaped API: OpenAI chat completions, the Responses API and
Anthropic's Messages API all become a `ChatCompletionRequest` and run through `prepare_chat`.

Invariants:
- Everything that can be known before the first byte — limits, model, grammar, template, context
  length — is checked here and raised as an `APIError`/engine error (a plain 4xx), before any
  work is queued.
- Front ends differ only in how they translate their request in and the events out: sampling,
  grammars, tool-call parsing and reasoning are the same code for all of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from engines.errors import EngineError, InvalidRequest
from engines.kinds import CHAT, ChatEngine
from engines.llm.call_grammars import (
    answers_beside_calls,
    grammar_format,
    grammar_tags,
    inline_refs,
    tool_call_grammar,
)
from engines.llm.chat_formats import DEFAULT_FORMAT
from engines.llm.constrain import json_schema_grammar, lenient
from engines.pool import EnginePool
from engines.types import GenerationRequest, ImageInput
from server import logs
from server.chat_output import ChoiceOutput
from server.errors import APIError, from_engine_error
from server.first_call import FirstCallEnd
from server.generation import check_limits
from server.images import (
    TOOL_IMAGE_TEXT,
    ImagePolicy,
    collect_images,
    first_image_param,
    in_tool_results,
    tool_images_as_text,
)
from server.reasoning import opened_in_prompt, thinking_kwargs
from server.schemas.chat import ChatCompletionRequest
from server.settings import Settings
from server.tool_calls import single_token_tags

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedChat:
    """A checked chat request, ready to submit: the engine, the generation and how to read its
    output (`output_for()` gives a fresh parser per choice)."""

    engine: ChatEngine
    generation: GenerationRequest
    output_for: Callable[[], ChoiceOutput]

    @property
    def request_id(self) -> str:
        return self.generation.request_id


@contextmanager
def errors_named(
    names: Mapping[str, str], paths: Callable[[], Mapping[str, str]] | None = None
) -> Iterator[None]:
    """Errors raised inside — validating or preparing the chat request a front end built from
    its own request — name the front end's fields (`names`: chat's → its own, by whole param
    or by the part before the first `[`): the `param`, and the message where it quotes the
    param or starts with it. A client sees the fields it sent, not the chat request's.

    `paths` (asked only when an error names a chat message) maps chat messages and content
    parts — `messages[i]`, `messages[i].content[j]` — to where the front end's request has
    them: its messages do not map one to one (a system prompt, a tool result or an
    `instructions` becomes a message of its own), so chat's indices would point the client
    at the wrong message. The longest mapped prefix of the param wins, before `names`."""
    try:
        yield
    except EngineError as exc:
        raise _renamed(from_engine_error(exc), names, paths) from None
    except APIError as exc:
        raise _renamed(exc, names, paths) from None


# A chat message, or one of its content parts, at the start of an error's param.
_MESSAGE_PATH = re.compile(r"messages\[\d+\](?:\.content\[\d+\])?")


def _renamed(
    error: APIError, names: Mapping[str, str], paths: Callable[[], Mapping[str, str]] | None
) -> APIError:
    param = error.param
    if param is None:
        return error
    own = names.get(param) or _own_path(param, paths) or names.get(param.partition("[")[0])
    if own is None:
        return error
    message = error.message.replace(f"'{param}'", f"'{own}'")
    if message.startswith((f"{param} ", f"{param}:")):
        message = own + message[len(param) :]
    error.param, error.message = own, message
    return error


def _own_path(param: str, paths: Callable[[], Mapping[str, str]] | None) -> str | None:
    """`param` (a chat message's path) as the front end's request names it, if `paths` knows."""
    match = _MESSAGE_PATH.match(param)
    if paths is None or match is None:
        return None
    mapping = paths()
    for prefix in (match[0], match[0].partition(".")[0]):
        if prefix in mapping:
            return mapping[prefix] + param[len(prefix) :]
    return None


def template_inputs(
    chat: ChatCompletionRequest,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The tools in play and the messages, as the chat template takes them."""
    tools = [tool.model_dump(exclude_none=True) for tool in chat.tools_in_play()]
    messages = [message.model_dump(exclude_none=True) for message in chat.messages]
    return tools, messages


def listed_tools(tools: list[dict[str, Any]], deferred: Collection[str]) -> list[dict[str, Any]]:
    """The tools the template writes in the prompt's tools block: `tools` less the `deferred`
    ones (Messages' deferred tools: the conversation holds their definitions where a tool search
    loaded them, server/schemas/deferred_tools.py). Those are offered all the same: a forced
    tool_choice, the grammar, the tool-call parser and argument validation take every tool."""
    return [tool for tool in tools if tool["function"]["name"] not in deferred]


async def count_prompt_tokens(
    pool: EnginePool,
    chat: ChatCompletionRequest,
    fit: bool = False,
    deferred: Collection[str] = frozenset(),
) -> int:
    """The prompt's length in tokens exactly as `prepare_chat` renders it (template, tools,
    image placeholders), without checking or queueing anything else; `fit`: but that it and
    `max_tokens` fit the context, as `prepare_chat` checks (ContextTooLong). `deferred`: as
    `prepare_chat`'s."""
    tools, messages = template_inputs(chat)
    engine, _ = await engine_and_images(pool, chat.model, messages)
    kwargs = template_kwargs(chat, engine)
    listed = listed_tools(tools, deferred)
    tokens = len(await asyncio.to_thread(engine.encode_chat, messages, listed, kwargs))
    if fit:
        engine.check_fits(tokens, chat.requested_max_tokens())
    return tokens


async def prepare_chat(
    pool: EnginePool,
    settings: Settings,
    chat: ChatCompletionRequest,
    request_id: str,
    clamp_max_tokens: bool = False,
    deferred: Collection[str] = frozenset(),
) -> PreparedChat:
    """Check `chat` against the settings and its model and build its `GenerationRequest`.

    `clamp_max_tokens`: a `max_tokens` beyond the room left in the context is lowered to that
    room instead of refused (Anthropic clients send 32k–128k whatever the model).
    `deferred`: names of tools left out of the prompt's tools block (`listed_tools`).

    Long on purpose: the checks run in this order (request-only ones before the model loads,
    the model's before any work is queued), and one function keeps that order visible.
    """
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
    tools, messages = template_inputs(chat)
    check_tool_choice(chat, tools)
    engine, images = await engine_and_images(pool, chat.model, messages)
    check_vision(engine, chat.model, images, messages, _asks_grammar(chat))
    grammar = await checked_grammar(chat, tools, engine)
    if grammar is not None and chat.continue_final_message:
        raise APIError(
            400,
            "a prefill (a final assistant message the reply continues) cannot be combined with "
            "constrained output (response_format, output_config or a forced tool_choice)",
            param="messages",
        )
    # Rendering and tokenizing (no MLX: any thread) off the event loop: a prompt near the body
    # limit takes seconds, which would stall every other request and stream meanwhile.
    kwargs = template_kwargs(chat, engine)
    listed = listed_tools(tools, deferred)
    prompt = await asyncio.to_thread(engine.encode_chat, messages, listed, kwargs)
    prediction: list[int] = []
    if chat.prediction is not None:
        prediction = await asyncio.to_thread(engine.encode_output, chat.prediction.text())
        # No output is longer than the context: past that, a prediction (indexed on the engine
        # thread, per token) would only stall it.
        engine.check_fits(len(prediction), None, param="prediction")
    info = engine.info
    think_tags = info.think_tags if info and info.reasoning else None
    # Whether the template left the block open (its tags are a few tokens at most).
    think_opened = think_tags is not None and opened_in_prompt(
        engine.decode(prompt[-32:]), think_tags
    )
    untagged = info.untagged_tool_calls if info else True
    tool_format = info.tool_format if info else DEFAULT_FORMAT
    if grammar is not None and tools:  # a call under a grammar is read in the format it took
        tool_format = grammar_format(tool_format, tools)
    tool_schemas = {tool["function"]["name"]: tool["function"].get("parameters") for tool in tools}
    single_call = chat.parallel_tool_calls is False
    end_watch = None
    if single_call and tools and grammar is None and tool_format != "harmony":
        # No grammar holds the model to one call: the output ends after its first (harmony's
        # turn ends with its call).
        end_watch = partial(
            FirstCallEnd, tool_format, tool_schemas, think_tags, think_opened, untagged
        )

    named = chat.forced_tool()
    forced = None
    if chat.tool_choice == "required" or named is not None:
        forced = (named,) if named is not None else tuple(tool_schemas)

    def output_for() -> ChoiceOutput:
        return ChoiceOutput(
            think_tags, think_opened, tool_schemas, untagged, tool_format, single_call, forced
        )

    requested = chat.requested_max_tokens()
    if clamp_max_tokens and requested is not None:
        room = engine.check_fits(len(prompt), None)
        requested = min(requested, room)
    max_tokens = engine.check_fits(len(prompt), requested)

    logs.request_id.set(request_id)  # this id, not the middleware's, from here on
    generation = GenerationRequest(
        request_id,
        prompt,
        max_tokens,
        chat.sampling(pool.sampling_defaults(chat.model)),
        chat.stop_sequences(),
        end_watch=end_watch,
        n=chat.choices,
        logprobs=logprobs,
        grammar=grammar,
        images=images,
        speculative=chat.speculative,
        prediction=tuple(prediction),
        # None asked is the room; a vision engine lowers it, or a clamped one, further where
        # the images' tokens make the prompt longer than its ids.
        clamp_max_tokens=clamp_max_tokens or requested is None,
    )
    logger.info(
        "%s chat model=%r prompt_tokens=%d images=%d max_tokens=%d n=%d stream=%s",
        request_id,
        chat.model,
        len(prompt),
        len(images),
        max_tokens,
        chat.choices,
        bool(chat.stream),
    )
    return PreparedChat(engine, generation, output_for)


async def engine_and_images(
    pool: EnginePool, model: str, messages: list[dict[str, Any]]
) -> tuple[ChatEngine, tuple[ImageInput, ...]]:
    """The model's engine and the messages' images, decoded in order (each part replaced by
    `{"type": "image"}`, in place). A bad image is a 400 before the model loads, unless a tool
    result holds an image: whether the model reads it (`ChatModelInfo.tool_images`) or
    `TOOL_IMAGE_TEXT` in its place is known only once the engine is there."""
    policy = ImagePolicy.from_env()
    if not in_tool_results(messages):
        images = await collect_images(messages, policy)
        return await pool.acquire(model, CHAT), images
    engine = await pool.acquire(model, CHAT)
    if not (engine.info and engine.info.tool_images):
        tool_images_as_text(messages, TOOL_IMAGE_TEXT)
    return engine, await collect_images(messages, policy)


def template_kwargs(chat: ChatCompletionRequest, engine: ChatEngine) -> dict[str, Any]:
    """The request's template variables, with the thinking switch of a model that thinks in tags
    (gpt-oss's harmony template reads `reasoning_effort` itself)."""
    info = engine.info
    thinks = bool(info and info.reasoning and info.tool_format != "harmony")
    return thinking_kwargs(chat.template_kwargs(), thinks)


def check_vision(
    engine: ChatEngine,
    model: str,
    images: tuple[ImageInput, ...],
    messages: list[dict[str, Any]],
    grammar_asked: bool,
) -> None:
    """Refuse images for a text-only model, and what the vision path cannot do yet."""
    if not images:
        return
    if not (engine.info and engine.info.vision):
        param = first_image_param(messages)
        raise APIError(
            400,
            f"{param}: model '{model}' is a text-only model: it cannot read images",
            param=param,
            code="image_input_unsupported",
        )
    if grammar_asked:
        raise APIError(
            400,
            "constrained output (response_format, a forced tool_choice) is not supported "
            "with images yet",
            param="response_format",
            code="unsupported_parameter",
        )


def _asks_grammar(chat: ChatCompletionRequest) -> bool:
    fmt = chat.response_format
    return (
        chat.tool_choice == "required"
        or chat.forced_tool() is not None
        or (fmt is not None and fmt.type != "text")
    )


def check_tool_choice(chat: ChatCompletionRequest, tools: list[dict[str, Any]]) -> None:
    """Refuse a forced `tool_choice` that cannot be honoured (before any model is loaded). With
    `response_format` it stands: the output must be a call, and the schema is for an answer
    (OpenAI's Agents SDK sends both when an agent with an output type must use a tool)."""
    forced = chat.forced_tool()
    if chat.tool_choice != "required" and forced is None:
        return
    if not tools:
        raise APIError(400, "tool_choice requires tools", param="tools")
    if forced is not None and forced not in {t["function"]["name"] for t in tools}:
        raise APIError(
            400, f"tool_choice names an unknown function {forced!r}", param="tool_choice"
        )


async def checked_grammar(
    chat: ChatCompletionRequest, tools: list[dict[str, Any]], engine: ChatEngine
) -> str | None:
    """`output_grammar`'s, compiled against the tokenizer (no MLX; the first one builds
    llguidance's tokenizer, a pass over the whole vocabulary: off the event loop). A call-or-
    answer grammar the library refuses because of the tools' schemas (a definition that only
    refers to itself, a keyword it does not implement in a strict tool) falls back to the JSON
    answer alone — what such a request got before tools could be called beside a schema —, not
    a 400 about tools the client did not ask to force."""
    grammar, param = output_grammar(chat, tools, engine)
    if grammar is None:
        return None
    try:
        await asyncio.to_thread(engine.check_grammar, grammar, param)
    except InvalidRequest:
        if param == "tool_choice":
            await asyncio.to_thread(_check_each_tool, tools, chat.forced_tool(), engine)
        answer = _answer_schema(chat) if param != "tool_choice" and tools else None
        if answer is None:
            raise
        grammar = json_schema_grammar(answer[0])
        await asyncio.to_thread(engine.check_grammar, grammar, param)
    return grammar


def _check_each_tool(tools: list[dict[str, Any]], forced: str | None, engine: ChatEngine) -> None:
    """Where a forced call cannot be enforced, InvalidRequest naming the first tool whose
    parameters schema is the cause (the call grammar holds every tool's, or only the one
    `forced` names). Nothing where the engine refuses grammars whatever the schema (the vision
    path): no tool is at fault there."""
    try:
        engine.check_grammar(json_schema_grammar({"type": "object"}), "tool_choice")
    except InvalidRequest:
        return
    for tool in tools:
        function = tool["function"]
        if forced is not None and function["name"] != forced:
            continue
        schema = inline_refs(function.get("parameters") or {}, loose=not function.get("strict"))
        try:
            engine.check_grammar(json_schema_grammar(schema), "tool_choice")
        except InvalidRequest as exc:
            raise InvalidRequest(
                f"{exc.message.rstrip('.')} (in the parameters of tool '{function['name']}')",
                param="tool_choice",
            ) from None


def _answer_schema(chat: ChatCompletionRequest) -> tuple[dict[str, Any], str] | None:
    """The JSON `response_format` asks for, and the param it comes from (None: plain text)."""
    response_format = chat.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}, "response_format"
    if response_format.json_schema is None:
        raise APIError(400, "json_schema is required", param="response_format.json_schema")
    schema = response_format.json_schema.schema_ or {"type": "object"}
    if not response_format.json_schema.strict:
        schema = lenient(schema)
    return schema, "response_format.json_schema.schema"


def output_grammar(
    chat: ChatCompletionRequest, tools: list[dict[str, Any]], engine: ChatEngine
) -> tuple[str | None, str]:
    """The grammar the output must follow, if any, and the param it comes from: a forced tool
    call (`tool_choice` "required" or a named function, in the model's own call format) or
    `response_format` JSON — or, with tools the model may call, calls or that JSON."""
    forced = chat.forced_tool()
    if chat.tool_choice == "required" or forced is not None:
        parallel = forced is None and chat.parallel_tool_calls is not False
        tool_format = engine.info.tool_format if engine.info else DEFAULT_FORMAT
        tags = single_token_tags(engine, grammar_tags(tool_format, tools))
        return tool_call_grammar(tools, forced, parallel, tool_format, tags), "tool_choice"
    answer = _answer_schema(chat)
    if answer is None:
        return None, ""
    schema, param = answer
    tool_format = engine.info.tool_format if engine.info else DEFAULT_FORMAT
    if tools and answers_beside_calls(tool_format, tools):
        # tool_choice "auto": the model calls tools or answers in the schema, as OpenAI's API
        # lets it (agent frameworks send an output schema beside their tools).
        parallel = chat.parallel_tool_calls is not False
        tags = single_token_tags(engine, grammar_tags(tool_format, tools))
        untagged = engine.info.untagged_tool_calls if engine.info else True
        grammar = tool_call_grammar(
            tools, None, parallel, tool_format, tags, answer_schema=schema, untagged=untagged
        )
        return grammar, param
    return json_schema_grammar(schema), param


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

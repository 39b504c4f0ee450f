"""`POST /v1/chat/completions` request and response shapes.

Spec: https://platform.openai.com/docs/api-reference/chat/create (../shared/openai/openapi.yaml,
`CreateChatCompletionRequest`). Every spec field is either supported, accepted-and-ignored (named
in the `x-mlxd-ignored-fields` response header) or rejected with a 400 naming it; the lists are in
docs/api.md. Numbers are strict: "0.5" is not a temperature.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from engines.llm.templates import CONTINUE_FINAL
from engines.types import TokenLogprob
from server.body import check_json_text
from server.errors import APIError
from server.schemas.common import SamplingFields, Strict, object_schema, tool_choice_type_read

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class TextPart(Strict):
    type: Literal["text", "input_text"]
    text: str


class ImageURL(Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Strict):
    """An image (a base64 `data:` URI or an http(s) URL): decoded by server/images.py."""

    type: Literal["image_url"]
    image_url: ImageURL


# The content part types read, as a refusal names them.
_PARTS_READ = "parts are 'text', 'image_url' and, from the assistant, 'refusal'"


class ChatMessage(Strict):
    role: Role
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = Field(None, validate_default=True)
    refusal: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts_read_here(cls, value: Any) -> Any:
        """An assistant's `refusal` part (the spec's assistant parts are `text` and `refusal`; a
        client replays them) is its text. A part of another type, or no object, is refused
        naming it: left to the union, pydantic would report only its first branch's error,
        "Input should be a valid string"."""
        if not isinstance(value, list):
            return value
        parts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict):
                raise ValueError(f"content[{index}] is not an object: {_PARTS_READ}")
            kind = part.get("type")
            if kind == "refusal":
                if not isinstance(part.get("refusal"), str):
                    raise ValueError(f"content[{index}].refusal should be a string")
                part = {"type": "text", "text": part["refusal"]}
            elif kind is None:
                raise ValueError(f"content[{index}] has no type: {_PARTS_READ}")
            elif kind not in ("text", "input_text", "image_url"):
                raise ValueError(
                    f"content[{index}] has type {kind!r}, which this server does not "
                    f"read: {_PARTS_READ}"
                )
            parts.append(part)
        return parts

    @field_validator("tool_calls")
    @classmethod
    def _calls_are_function_objects(
        cls, value: list[dict[str, Any]] | None
    ) -> list[dict[str, Any]] | None:
        """Chat templates read each call's `function` as an object and parse its `arguments`
        when they are a JSON string: anything else there is refused here, not met there.
        Otherwise as lenient as before (a missing name or non-JSON arguments pass through)."""
        for index, call in enumerate(value or []):
            function = call.get("function", {})
            if not isinstance(function, dict):
                raise ValueError(f"tool_calls[{index}].function must be an object")
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                check_json_text(arguments, f"tool_calls[{index}].function.arguments")
        return value

    @field_validator("tool_call_id")
    @classmethod
    def _tool_results_name_their_call(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A `tool` message answers one call: the spec requires its id (OpenAI 400s without it)."""
        if info.data.get("role") == "tool" and value is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return value


class FunctionDefinition(Strict):
    # OpenAI's limit is 64 characters; up to 128 are taken, as Anthropic's API takes them (a
    # Messages request runs as a chat request; Claude Code's MCP tool names run long).
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    _an_object = field_validator("parameters")(object_schema)


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: FunctionName


class AllowedTools(Strict):
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice] = Field(min_length=1)


class AllowedToolsChoice(Strict):
    """The spec's `allowed_tools`: the model is offered these of `tools` (a client keeps `tools`
    the same turn after turn, so the prompt's cached prefix holds), `mode` as a tool_choice.
    Read as that subset and that mode once validated (`_allowed_tools_narrow_the_tools`)."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


class JSONSchemaFormat(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class Prediction(Strict):
    """Predicted Outputs: text the reply is expected to hold (a file being edited)."""

    type: Literal["content"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(
            part.text for part in self.content
        )  # fmt: skip


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: (
        Literal["none", "auto", "required"] | NamedToolChoice | AllowedToolsChoice | None
    ) = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # extension, as in vLLM
    speculative: bool | None = None  # extension: speculative decoding off/on (None: the model's)
    # Extension, as in vLLM: the output continues the final assistant message (Anthropic's
    # prefill, which /v1/messages sets) instead of opening a new assistant turn.
    continue_final_message: bool | None = None
    prediction: Prediction | None = None
    # Fields of the spec that later work may support; rejected when they ask for something.
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    modalities: list[str] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_count(self) -> int | None:
        """None when logprobs are off, else how many alternatives to return per token."""
        if self.top_logprobs and not self.logprobs:
            return -1  # rejected by the route: the spec needs logprobs: true with top_logprobs
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _a_tool_choice_type_read_here(cls, value: Any) -> Any:
        return tool_choice_type_read(value)

    @model_validator(mode="after")
    def _allowed_tools_narrow_the_tools(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        if isinstance(choice, AllowedToolsChoice):
            allowed = [tool.function.name for tool in choice.allowed_tools.tools]
            offered = {tool.function.name for tool in self.tools or []}
            unknown = next((name for name in allowed if name not in offered), None)
            if unknown is not None:  # a 400 naming the field (a model validator's has no place)
                raise APIError(
                    400,
                    f"tool_choice.allowed_tools names an unknown function {unknown!r}",
                    param="tool_choice",
                )
            self.tools = [tool for tool in self.tools or [] if tool.function.name in allowed]
            self.tool_choice = choice.allowed_tools.mode
        return self

    @model_validator(mode="after")
    def _continues_an_assistant_message(self) -> ChatCompletionRequest:
        last = self.messages[-1]
        if self.continue_final_message and (
            last.role != "assistant" or not last.content or last.tool_calls
        ):
            raise ValueError(
                "continue_final_message needs the last message to be the assistant's, with "
                "text and no tool calls"
            )
        return self

    def template_kwargs(self) -> dict[str, Any]:
        """Extra variables for the chat template (`enable_thinking`, `reasoning_effort`, …), and
        `CONTINUE_FINAL` when the output continues the final assistant message."""
        extra = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort is not None:
            extra.setdefault("reasoning_effort", self.reasoning_effort)
        # Only the checked field continues a message: as a template variable it would end the
        # prompt inside whatever message is last (a user's, say).
        extra.pop(CONTINUE_FINAL, None)
        if self.continue_final_message:
            extra[CONTINUE_FINAL] = True
        return extra

    def tools_in_play(self) -> list[Tool]:
        """The tools the model is told about (none when `tool_choice` is "none")."""
        return [] if self.tool_choice == "none" else list(self.tools or [])

    def forced_tool(self) -> str | None:
        """The function a named `tool_choice` forces, if any."""
        return (
            self.tool_choice.function.name
            if isinstance(self.tool_choice, NamedToolChoice)
            else None
        )

    def unsupported_field(self) -> str | None:
        """The first field that asks for something this server cannot do yet, if any."""
        asks = {
            "functions": bool(self.functions),
            "function_call": self.function_call not in (None, "none", "auto"),
            "audio": self.audio is not None,
            "web_search_options": self.web_search_options is not None,
            "modalities": any(m != "text" for m in self.modalities or []),
        }
        return next((name for name, asked in asks.items() if asked), None)


# Fields of the spec accepted and ignored (they do not change what a local server does).
IGNORED_FIELDS = (
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "verbosity",
    "moderation",
)


def logprob_content(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Chat's `logprobs.content[]` (spec `ChatCompletionTokenLogprob`)."""
    return [
        {
            "token": entry.text,
            "logprob": entry.logprob,
            "bytes": list(entry.raw),
            "top_logprobs": [
                {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
                for _, text, logprob in entry.top
            ],
        }
        for entry in entries
    ]


def completion_response(
    request_id: str,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, Any],
) -> dict[str, Any]:
    """A `chat.completion` object (spec `CreateChatCompletionResponse`)."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def message_choice(
    index: int,
    message: dict[str, Any],
    finish_reason: str,
    logprobs: list[TokenLogprob] | None,
) -> dict[str, Any]:
    """A choice of a `chat.completion`; `message` holds content (and tool calls, reasoning)."""
    return {
        "index": index,
        "message": {"role": "assistant", "refusal": None, **message},
        "logprobs": None
        if logprobs is None
        else {"content": logprob_content(logprobs), "refusal": None},
        "finish_reason": finish_reason,
    }


def chunk(
    request_id: str,
    model: str,
    created: int,
    choice: dict[str, Any] | None,
    usage: dict[str, Any] | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    """A `chat.completion.chunk` (spec `CreateChatCompletionStreamResponse`).

    With include_usage, every chunk carries `usage: null` and the last one carries the totals with
    an empty `choices` list (choice None).
    """
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if choice is None else [choice],
    }
    if include_usage:
        body["usage"] = usage
    return body


def delta_choice(
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: list[TokenLogprob] | None = None,
) -> dict[str, Any]:
    return {
        "index": index,
        "delta": delta,
        "logprobs": None
        if logprobs is None
        else {"content": logprob_content(logprobs), "refusal": None},
        "finish_reason": finish_reason,
    }

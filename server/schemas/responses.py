"""`POST /v1/responses` (and `/v1/responses/compact`) request shapes and their translation into a
chat request.

Spec: https://platform.openai.com/docs/api-reference/responses/create (`CreateResponse` in
../shared/openai/openapi.yaml). The Responses API is a front end over the chat path: a request
becomes a `ChatCompletionRequest` (`to_chat`) and runs through `prepare_chat` like any other.

Invariants:
- Every input item, content part and tool is checked here; a malformed one is a 400 whose
  `param` names it in the Responses request's own terms (`input[2].call_id`, `tools[0].name`).
- Tool types that name hosted tools (`web_search`, `file_search`, …) are accepted and ignored: a
  local model cannot run them, and agents such as Codex send them on every turn. A `namespace`
  tool's functions are offered to the model as `namespace.name`.
- The chat request built here is never invalid: names and shapes are checked before.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from server.body import check_json_text
from server.compaction_content import decode
from server.errors import APIError, loc_to_param
from server.schemas.common import Strict, object_schema, tool_choice_type_read
from server.validation_messages import pydantic_message

M = TypeVar("M", bound=BaseModel)
FUNCTION_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
NAMESPACE_SEPARATOR = "."

# Tool types a hosted OpenAI deployment runs itself; here they are accepted and ignored.
HOSTED_TOOL_TYPES = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer",
        "computer_use_preview",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "custom",
        "tool_search",
        "programmatic_tool_calling",
    }
)
UNSUPPORTED_PARTS = frozenset({"input_file", "input_audio"})


class TextPart(Strict):
    type: Literal["input_text", "output_text", "text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class RefusalPart(Strict):
    type: Literal["refusal"]
    refusal: str


class ImagePart(Strict):
    """An image by URL (a base64 `data:` URI or http(s)); `file_id` needs a Files API (none)."""

    type: Literal["input_image"]
    image_url: str | None = Field(None, min_length=1)
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None


class MessageItem(Strict):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart | RefusalPart | ImagePart]
    id: str | None = None
    status: str | None = None
    phase: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(
            p.text if isinstance(p, TextPart) else p.refusal
            for p in self.content
            if not isinstance(p, ImagePart)
        )

    def images(self) -> list[ImagePart]:
        content = self.content if isinstance(self.content, list) else []
        return [p for p in content if isinstance(p, ImagePart)]


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None
    namespace: str | None = None

    @field_validator("arguments")
    @classmethod
    def _arguments_nest_within_limit(cls, value: str) -> str:
        """The chat templates parse the arguments (server/body.py `check_json_text`)."""
        check_json_text(value, "arguments")
        return value


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[TextPart | ImagePart]
    id: str | None = None
    status: str | None = None

    def images(self) -> bool:
        return isinstance(self.output, list) and any(isinstance(p, ImagePart) for p in self.output)

    def text(self) -> str:
        """Its text (of an output without images)."""
        if isinstance(self.output, str):
            return self.output
        return "".join(p.text for p in self.output if isinstance(p, TextPart))


class ReasoningItem(Strict):
    """Past reasoning: accepted and left out of the prompt (chat templates drop old thoughts)."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None
    status: str | None = None


class CompactionItem(Strict):
    """A conversation compacted by `POST /v1/responses/compact` (server/compaction_content.py):
    it stands for the user messages it carries, then its summary as a user message. Content
    this server did not write, or whose messages are no message items, is refused (a 400
    naming `encrypted_content`) when the item is read."""

    type: Literal["compaction"]
    encrypted_content: str
    id: str | None = None
    created_by: str | None = None

    @field_validator("encrypted_content")
    @classmethod
    def _written_here(cls, value: str) -> str:
        for index, raw in enumerate(decode(value).messages):
            try:
                MessageItem.model_validate(raw)
            except ValidationError:
                raise ValueError(f"the compaction's message {index} is no message item") from None
        return value

    def carried(self) -> list[MessageItem]:
        """The user messages it carries of the conversation it compacted (the newest)."""
        return [MessageItem.model_validate(raw) for raw in decode(self.encrypted_content).messages]

    def messages(self) -> list[MessageItem]:
        """What the item stands for in the conversation: its user messages, then its summary
        (headed, saying how many earlier user messages it does not carry)."""
        summary = decode(self.encrypted_content).summary_message()
        return [*self.carried(), MessageItem(role="user", content=summary)]


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | CompactionItem
ITEM_MODELS: dict[str, type[BaseModel]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
    "compaction": CompactionItem,
}


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    _an_object = field_validator("parameters")(object_schema)


class NamespaceTool(Strict):
    type: Literal["namespace"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    tools: list[dict[str, Any]]


class NamedFunction(Strict):
    type: Literal["function"]
    name: str


class AllowedTools(Strict):
    """The spec's `allowed_tools` choice: the model is offered these functions of `tools` (the
    hosted tools listed are not run here), with `mode` as the tool_choice."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]] = Field(min_length=1)

    def names(self) -> list[str]:
        """The functions it allows, as offered (a namespace's qualified)."""
        return [
            f"{tool['namespace']}{NAMESPACE_SEPARATOR}{tool['name']}"
            if isinstance(tool.get("namespace"), str)
            else str(tool.get("name"))
            for tool in self.tools
            if tool.get("type") == "function"
        ]


class TextFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(Strict):
    format: TextFormat | None = None
    verbosity: str | None = None


SummaryLevel = Literal["auto", "concise", "detailed", "none"]


class ReasoningConfig(Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: SummaryLevel | None = None
    generate_summary: SummaryLevel | None = None  # `summary`'s deprecated name

    def wants_summary(self) -> bool:
        """Whether the reasoning is asked for as `summary_text` too (server/responses_output.py:
        there is no summarizer; the summary is the whole reasoning, whatever the level)."""
        return (self.summary or self.generate_summary or "none") != "none"


class ResponseCreateRequest(Strict):
    """What `POST /v1/responses` reads; `input` and `tools` are checked item by item
    (`input_items()`, `function_tools()`) so errors name the item."""

    model: str
    input: str | list[Any] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[Any] | None = Field(None, max_length=512)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | AllowedTools | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    truncation: Literal["auto", "disabled"] | None = None
    # Fields of the spec that later work may support; rejected when they ask for something.
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _a_tool_choice_type_read_here(cls, value: Any) -> Any:
        return tool_choice_type_read(value, " (hosted tools are not run here)")

    def unsupported_field(self) -> str | None:
        asks = {
            "background": bool(self.background),
            "conversation": self.conversation is not None,
            "prompt": self.prompt is not None,
        }
        return next((name for name, asked in asks.items() if asked), None)

    def logprobs_count(self) -> int | None:
        """How many alternatives each output token's logprob lists (`top_logprobs`, 0 unless
        given) when `include` asks for the output text's logprobs; None when it does not."""
        if LOGPROBS_INCLUDE in (self.include or []):
            return self.top_logprobs or 0
        return None

    def ignored_fields(self) -> tuple[str, ...]:
        """The fields sent in vain: `include` and `top_logprobs` count as read only when
        `include` asks for logprobs (the one value it may hold that changes anything here)."""
        if self.logprobs_count() is None:
            return (*IGNORED_FIELDS, "include", "top_logprobs")
        return IGNORED_FIELDS

    def input_items(self) -> list[InputItem]:
        return items_of(self.input)

    def namespaces(self) -> frozenset[str]:
        return frozenset(
            tool["name"]
            for tool in self.tools or []
            if isinstance(tool, dict) and tool.get("type") == "namespace" and "name" in tool
        )

    def function_tools(self) -> list[FunctionTool]:
        """The functions the model is offered (a namespace's with qualified names)."""
        functions: list[FunctionTool] = []
        for index, raw in enumerate(self.tools or []):
            param = f"tools[{index}]"
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind == "function":
                functions.append(_checked(FunctionTool, raw, param))
            elif kind == "namespace":
                functions += _namespace_functions(_checked(NamespaceTool, raw, param), param)
            elif not isinstance(kind, str) or kind not in HOSTED_TOOL_TYPES:
                raise APIError(
                    400,
                    f"Unknown tool type {kind!r}",
                    param=f"{param}.type",
                    code="invalid_value",
                )
        return functions


# `include`'s value that asks for the output text's logprobs (the others are not honoured).
LOGPROBS_INCLUDE = "message.output_text.logprobs"
IGNORED_FIELDS = (
    "user",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "client_metadata",
    "stream_options",
    "max_tool_calls",
)


def _checked(model: type[M], raw: Any, param: str) -> M:
    """`raw` as `model`; the error reported is the one deepest in the value (of a union's
    members, the one that got furthest: a part missing `text`, not "content is no string")."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        located = [(_field_path(e["loc"]), e) for e in exc.errors(include_url=False)]
        path, error = max(located, key=lambda pair: len(pair[0]))
        inner = loc_to_param(path)
        where = f"{param}.{inner}" if inner and not inner.startswith("[") else param + (inner or "")
        raise APIError(
            400,
            f"Invalid value for '{where}': {pydantic_message(error)}",
            param=where,
            code="invalid_value",
        ) from None


def _field_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """An error location without the union members pydantic names (`TextPart`, `str`)."""
    return tuple(part for part in loc if isinstance(part, int) or not part[:1].isupper())


class InputTokensRequest(ResponseCreateRequest):
    """`POST /v1/responses/input_tokens` (spec `TokenCountsBody`): what a create request reads,
    `model` optional (the server's default model when it has one)."""

    model: str | None = None  # type: ignore[assignment]


class CompactRequest(Strict):
    """`POST /v1/responses/compact` (spec `CompactResponseMethodPublicBody`): the conversation to
    compact, as a create request gives it; `model` optional (the server's default model)."""

    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None

    def input_items(self) -> list[InputItem]:
        return items_of(self.input or [])


# Fields of a compact request that change nothing here (prompt caching is automatic).
COMPACT_IGNORED_FIELDS = (
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "service_tier",
    "image",
)


def items_of(raw_input: str | list[Any]) -> list[InputItem]:
    """A request's `input` as items: a string is one user message."""
    if isinstance(raw_input, str):
        return [MessageItem(role="user", content=raw_input)]
    return parse_items(raw_input)


def parse_items(raw: list[Any]) -> list[InputItem]:
    """Input items (also a stored conversation's), each checked; errors name `input[i]`."""
    return [_parse_item(index, item) for index, item in enumerate(raw)]


def _parse_item(index: int, raw: Any) -> InputItem:
    param = f"input[{index}]"
    if not isinstance(raw, dict):
        raise APIError(400, f"'{param}' must be an object", param=param, code="invalid_value")
    kind = raw.get("type", "message")
    model = ITEM_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise APIError(
            400,
            f"Input items of type {kind!r} are not supported by this server",
            param=f"{param}.type",
            code="unsupported_value",
        )
    content = raw.get("content") if kind == "message" else None
    for part_index, part in enumerate(content if isinstance(content, list) else []):
        if isinstance(part, dict) and _type_name(part) in UNSUPPORTED_PARTS:
            raise APIError(
                400,
                f"Content of type {part['type']!r} is not supported by this server",
                param=f"{param}.content[{part_index}].type",
                code="unsupported_value",
            )
    item = _checked(model, raw, param)
    assert isinstance(item, InputItem)
    return item


def _type_name(raw: dict[str, Any]) -> str | None:
    """`raw["type"]` when it is a string (a list or object there is no type: looked up in a set
    it would raise; left to the item's own validation, which names it)."""
    kind = raw.get("type")
    return kind if isinstance(kind, str) else None


def _namespace_functions(namespace: NamespaceTool, param: str) -> list[FunctionTool]:
    functions = []
    for index, raw in enumerate(namespace.tools):
        inner = f"{param}.tools[{index}]"
        if isinstance(raw, dict) and _type_name(raw) in HOSTED_TOOL_TYPES:
            continue  # a custom (free-form grammar) tool inside a namespace: not offered
        function = _checked(FunctionTool, raw, inner)
        qualified = f"{namespace.name}{NAMESPACE_SEPARATOR}{function.name}"
        if len(qualified) > 64:
            raise APIError(
                400,
                f"'{qualified}' (namespace and function name) is longer than 64 characters",
                param=f"{inner}.name",
                code="invalid_value",
            )
        functions.append(function.model_copy(update={"name": qualified}))
    return functions

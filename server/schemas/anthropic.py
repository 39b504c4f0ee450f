"""Anthropic Messages API request shapes (`POST /v1/messages`, `/v1/messages/count_tokens`) and
their translation into the chat request every chat-shaped API runs through.

Spec: https://docs.anthropic.com/en/api/messages. Supported: `system` (a string or text blocks),
`messages` with text / `tool_use` / `tool_result` (holding text, image, document — a PDF there
read as a note, a PDF elsewhere refused — or `tool_reference` blocks) / `thinking` /
`redacted_thinking` blocks and
`{"role": "system"}` messages (Claude Code sends its environment that way), `tools`,
`tool_choice`, `max_tokens`, `stop_sequences`, `temperature` / `top_p` / `top_k`, `thinking`,
`output_config.format` (JSON schema; `output_format`, its structured-outputs beta name, too).
A tool's `strict` is read as chat's; `defer_loading` keeps it out of the prompt's tools block
until a `tool_reference` loads it (server/schemas/deferred_tools.py). Accepted and ignored:
`IGNORED_FIELDS`, `cache_control` and the other tool options, `thinking.budget_tokens`; tools of
Anthropic's own types (web search, bash, …: no schema to show the model) are left out. Anything
else a block or tool asks for is a 400 naming the field.

Invariants of the translation: the top-level `system` is the leading system message and each
`system` message stays a system message where it is (Claude Code's `x-anthropic-billing-header:`
line dropped from both; one left empty adds no message). Where the model's template cannot render
a system turn after the first message, the chat renderer merges it into the leading one
(engines/llm/templates.py), the same for every turn of a conversation, so a history that only
grows keeps a stable prefix; where it can, text that changes between sessions (Claude Code's
environment: working directory, date) stays behind the system prompt and the tools block. A
user turn's `tool_result` blocks become `tool` messages before its text; `tool_use` inputs
become JSON-text arguments.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from server.schemas.anthropic_tools import schema_for
from server.schemas.common import Strict, object_schema
from server.schemas.deferred_tools import ToolLoads, definition, kept_out

# Anthropic's own limit, 128 (Claude Code names MCP tools `mcp__<server>__<tool>`, often past
# OpenAI's 64); the chat path's tool schema takes as many.
TOOL_NAME = r"^[A-Za-z0-9_.-]{1,128}$"


class TextBlock(Strict):
    type: Literal["text"]
    text: str


class Base64Source(Strict):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(Strict):
    type: Literal["url"]
    url: str = Field(min_length=1)


class ImageBlock(Strict):
    """An image, inline (base64) or by URL: decoded by server/images.py as a chat image part."""

    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]
    cache_control: dict[str, Any] | None = None

    def chat_part(self) -> dict[str, Any]:
        source = self.source
        url = (
            source.url
            if isinstance(source, URLSource)
            else f"data:{source.media_type};base64,{source.data}"
        )
        return {"type": "image_url", "image_url": {"url": url}}


class PlainTextSource(Strict):
    type: Literal["text"]
    media_type: str = "text/plain"
    data: str


class ContentSource(Strict):
    type: Literal["content"]
    content: str | list[TextBlock]


class ResultDocumentBlock(Strict):
    """A document in a `tool_result`: plain text (`source.type` `text`) or text blocks
    (`content`), read as text under its title and context. A PDF (`base64`, `url`: Claude Code's
    Read tool answers with the file so) is a note in its place: mlxd has no PDF reader, and a
    refused tool result would fail every later request of the agent's session (as
    `TOOL_IMAGE_TEXT` stands for an image a model cannot read)."""

    type: Literal["document"]
    source: Annotated[
        PlainTextSource | ContentSource | Base64Source | URLSource, Field(discriminator="type")
    ]
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        """The document as the model reads it: its title and context, then its text."""
        source = self.source
        if isinstance(source, ContentSource):
            body = _text_of(source.content)
        elif isinstance(source, PlainTextSource):
            body = source.data
        else:
            body = TOOL_PDF_TEXT
        head = [line for line in (self.title, self.context) if line]
        return "\n".join([*head, body])


TOOL_PDF_TEXT = "[document: not shown, this server reads no PDFs]"


class DocumentBlock(ResultDocumentBlock):
    """A document the user attaches: as in a tool result, but a PDF is refused (the user can
    send its text, as a source of type `text`, instead)."""

    @field_validator("source")
    @classmethod
    def _a_text_source(cls, source: Any) -> Any:
        if isinstance(source, Base64Source | URLSource):
            raise ValueError(
                f"a document of source type '{source.type}' (a PDF) is not read here: send its "
                "text as a source of type 'text'"
            )
        return source


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolReferenceBlock(Strict):
    """A tool a tool search found, in a `tool_result` (the advanced-tool-use beta: Claude Code's
    ToolSearch answers with them, and adds the tool to `tools` with `defer_loading`). The model
    reads it as the deferred tool's definition, loaded there (server/schemas/deferred_tools.py)."""

    type: Literal["tool_reference"]
    tool_name: str = Field(min_length=1)


ResultBlock = Annotated[
    TextBlock | ImageBlock | ResultDocumentBlock | ToolReferenceBlock, Field(discriminator="type")
]


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ResultBlock] | None = None
    is_error: bool | None = None

    def chat_content(self, loads: ToolLoads) -> str | list[dict[str, Any]]:
        """The tool message's content: its text (an error's prefixed `Error: `), blocks joined
        by newlines (a document as its text, as in a user turn, a PDF as `TOOL_PDF_TEXT`; a
        `tool_reference` as `loads` reads it); with images, chat parts in the blocks' order
        (server/images.py decides what a model that reads no images sees of them)."""
        prefix = "Error: " if self.is_error else ""
        if self.content is None or isinstance(self.content, str):
            return prefix + (self.content or "")
        if not any(isinstance(block, ImageBlock) for block in self.content):
            texts = (b for b in self.content if not isinstance(b, ImageBlock))
            return prefix + "\n".join(_result_text(block, loads) for block in texts)
        return [part for part, _ in self._parts(loads)]

    def part_blocks(self) -> dict[int, int]:
        """For each part of `chat_content()`'s parts that is a block, the block's index (the
        prefix and the newlines between blocks are parts of their own): errors about a part
        name the client's block."""
        if not isinstance(self.content, list):
            return {}
        return {j: b for j, (_, b) in enumerate(self._parts(ToolLoads())) if b is not None}

    def _parts(self, loads: ToolLoads) -> list[tuple[dict[str, Any], int | None]]:
        """Chat parts, each with the index of the block it is (None: text mlxd adds)."""
        assert isinstance(self.content, list)
        parts: list[tuple[dict[str, Any], int | None]] = []
        if self.is_error:
            parts.append(({"type": "text", "text": "Error: "}, None))
        for n, block in enumerate(self.content):
            if n:
                parts.append(({"type": "text", "text": "\n"}, None))
            part = (
                block.chat_part()
                if isinstance(block, ImageBlock)
                else {"type": "text", "text": _result_text(block, loads)}
            )
            parts.append((part, n))
        return parts


def _result_text(
    block: TextBlock | ResultDocumentBlock | ToolReferenceBlock, loads: ToolLoads
) -> str:
    if isinstance(block, ToolReferenceBlock):
        return loads.text(block.tool_name)
    return block.text


class ThinkingBlock(Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Strict):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock,
    Field(discriminator="type"),
]
# Every block type, a tool result's own included (routes/messages.py drops them from error paths).
BLOCK_TYPES = frozenset(
    {
        "text",
        "image",
        "document",
        "tool_use",
        "tool_result",
        "tool_reference",
        "thinking",
        "redacted_thinking",
    }
)


# The blocks each role may hold (Anthropic refuses the others too).
ROLE_BLOCKS = {
    "user": frozenset({"text", "image", "document", "tool_result"}),
    "assistant": frozenset({"text", "tool_use", "thinking", "redacted_thinking"}),
    "system": frozenset({"text"}),
}


class InputMessage(Strict):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> InputMessage:
        for block in self.content if isinstance(self.content, list) else []:
            if block.type not in ROLE_BLOCKS[self.role]:
                raise ValueError(f"a {self.role} message cannot hold {block.type} blocks")
        return self


class Tool(Strict):
    """A client tool. Of Anthropic's own tool types (`type` other than `custom`), those the
    client runs (bash, the text editor, memory) are offered with their documented input schema
    (server/schemas/anthropic_tools.py); the others are accepted and left out
    (`MessagesFields.custom_tools`)."""

    type: str | None = None
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    strict: bool | None = None  # as chat's: a forced call is held to all of the schema
    # Kept out of the prompt's tools block until loaded (server/schemas/deferred_tools.py)
    defer_loading: bool | None = None

    _an_object = field_validator("input_schema")(object_schema)


class ToolChoice(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _tool_names_a_tool(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("a tool_choice of type 'tool' needs the tool's name")
        return self


class ThinkingConfig(Strict):
    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: int | None = Field(None, ge=1)
    display: Literal["summarized", "omitted"] | None = None


class OutputFormat(Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Strict):
    format: OutputFormat | None = None
    effort: str | None = None


class MessagesFields(Strict):
    """What `/v1/messages` and `/v1/messages/count_tokens` share."""

    model: str
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    # The structured-outputs beta's name for `output_config.format` (clients written for the
    # beta, e.g. langchain4j, still send it).
    output_format: OutputFormat | None = None

    @model_validator(mode="after")
    def _one_output_format(self) -> MessagesFields:
        if self.output_format and self.output_config and self.output_config.format:
            raise ValueError(
                "give the output format once: output_config.format (output_format is the "
                "structured-outputs beta's name for it)"
            )
        return self

    @model_validator(mode="after")
    def _prefill_without_trailing_whitespace(self) -> MessagesFields:
        """As Anthropic answers: a final assistant message (a prefill, continued by the reply)
        may not end in whitespace (templates would trim it, and the model continue elsewhere)."""
        last = self.messages[-1]
        if last.role == "assistant" and _text_of(last.content) != _text_of(last.content).rstrip():
            raise ValueError("final assistant content cannot end with trailing whitespace")
        return self

    @model_validator(mode="after")
    def _forced_tool_needs_tools(self) -> MessagesFields:
        """As Anthropic answers: a tool_choice that forces a call needs a tool to call (one of
        the request's own tools: server tools such as web search are not run here)."""
        choice = self.tool_choice
        if choice is not None and choice.type in ("any", "tool") and not self.custom_tools():
            raise ValueError(
                f"tool_choice of type '{choice.type}' needs tools: "
                + ("the request has none" if not self.tools else "mlxd runs none of its tools")
            )
        return self

    def custom_tools(self) -> list[Tool]:
        """The tools offered to the model: the client's own, and Anthropic-defined client tools
        with their schema."""
        offered = []
        for tool in self.tools or []:
            defined = None if tool.type in (None, "custom") else schema_for(str(tool.type))
            if defined is not None:
                description = tool.description or defined["description"]
                tool = tool.model_copy(
                    update={"description": description, "input_schema": defined["input_schema"]}
                )
            if tool.type in (None, "custom") or defined is not None:
                offered.append(tool)
        return offered

    def deferred_tools(self) -> frozenset[str]:
        """The names of the offered tools kept out of the prompt's tools block (deferred until a
        `tool_reference` loads them where it stands: server/schemas/deferred_tools.py)."""
        offered = {tool.name: bool(tool.defer_loading) for tool in self.custom_tools()}
        referenced = _referenced(self.messages)
        choice = self.tool_choice
        if choice is not None and choice.type == "tool" and choice.name not in referenced:
            offered[str(choice.name)] = False  # made to call it: the model is shown it
        return kept_out(offered, referenced)

    def _tool_loads(self) -> ToolLoads:
        deferred = self.deferred_tools()
        return ToolLoads(
            {
                tool.name: definition(_chat_tool(tool))
                for tool in self.custom_tools()
                if tool.name in deferred
            }
        )

    def thinking_shown(self) -> bool:
        return not (self.thinking and self.thinking.display == "omitted")

    def chat_body(self) -> dict[str, Any]:
        """The body of the chat request this asks for (a `ChatCompletionRequest` once
        validated). Its `tools` are all the offered tools, deferred ones included: the chat
        path is told which of them the prompt's tools block leaves out (`deferred_tools()`)."""
        messages = chat_messages(self.system, self.messages, self._tool_loads())
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        # A prefill: the reply continues it. (`messages` may be empty: empty system turns make
        # no chat message, and the chat request's own check answers that.)
        final = messages[-1] if messages else {}
        if (
            self.messages[-1].role == "assistant"
            and final.get("content")
            and "tool_calls" not in final
        ):
            body["continue_final_message"] = True
        tools = self.custom_tools()
        if tools:
            body["tools"] = [_chat_tool(tool) for tool in tools]
            body.update(_chat_tool_choice(self.tool_choice))
        if self.thinking is not None and self.thinking.type != "adaptive":
            body["chat_template_kwargs"] = {"enable_thinking": self.thinking.type == "enabled"}
        output_format = self.output_format or (self.output_config and self.output_config.format)
        if output_format:
            schema = output_format.schema_
            body["response_format"] = {
                "type": "json_schema",
                # Anthropic holds every structured output to its schema (no non-strict mode).
                "json_schema": {"name": "output", "schema": schema, "strict": True},
            }
        return body

    def chat_paths(self) -> dict[str, str]:
        """Where `chat_body()`'s messages came from in this request (for errors that name
        them: `server.chat_pipeline.errors_named`)."""
        return chat_paths(self.system, self.messages)


class MessagesRequest(MessagesFields):
    """`POST /v1/messages`."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    stream: bool | None = False
    temperature: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)

    def chat_body(self) -> dict[str, Any]:
        sampling = {
            "max_tokens": self.max_tokens,
            "stop": self.stop_sequences or None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stream": self.stream,
        }
        given = {key: value for key, value in sampling.items() if value is not None}
        return {**super().chat_body(), **given}


class CountTokensRequest(MessagesFields):
    """`POST /v1/messages/count_tokens`: a Messages request without `max_tokens`."""


# Top-level fields of the spec accepted and ignored (named in `x-mlxd-ignored-fields`).
IGNORED_FIELDS = (
    "metadata",
    "context_management",
    "service_tier",
    "container",
    "mcp_servers",
    "inference_geo",
    "cache_control",
)


def chat_messages(
    system: str | list[TextBlock] | None,
    messages: list[InputMessage],
    loads: ToolLoads | None = None,
) -> list[dict[str, Any]]:
    """Chat messages for an Anthropic `system` and `messages` (see the module's invariants);
    `loads`: the deferred tools' definitions, for the `tool_reference` blocks that load them."""
    return _conversation(system, messages, loads or ToolLoads())[0]


def chat_paths(
    system: str | list[TextBlock] | None, messages: list[InputMessage]
) -> dict[str, str]:
    """Where each of `chat_messages`' messages and content parts came from, as this request
    names it: `messages[i]` → `system` or `messages[k]`, a tool result's turn →
    `messages[k].content[b]` (its block) and its parts → `messages[k].content[b].content[c]`,
    `messages[i].content[j]` → `messages[k].content[b]` (tool results are no part of the user
    turn's content, so block and part indices differ)."""
    return _conversation(system, messages, ToolLoads())[1]


def _conversation(
    system: str | list[TextBlock] | None, messages: list[InputMessage], loads: ToolLoads
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    turns = _system_turns(system or "")
    paths = {f"messages[{i}]": "system" for i in range(len(turns))}
    for k, message in enumerate(messages):
        first = len(turns)
        if message.role == "system":
            turns.extend(_system_turns(message.content))
        elif message.role == "user":
            turns.extend(_user_turns(message.content, loads))
        else:
            turns.append(_assistant_turn(message.content))
        paths.update({f"messages[{i}]": f"messages[{k}]" for i in range(first, len(turns))})
        if message.role == "user" and isinstance(message.content, list):
            paths.update(_block_paths(message.content, first, k))
    return turns, paths


def _block_paths(content: list[Any], first: int, k: int) -> dict[str, str]:
    """For user message `k` whose turns start at chat message `first` (`_user_turns`: one tool
    turn per `tool_result` block, then the user turn of its text and image blocks)."""
    results = [b for b, block in enumerate(content) if isinstance(block, ToolResultBlock)]
    parts = [
        b
        for b, block in enumerate(content)
        if isinstance(block, ImageBlock | TextBlock | DocumentBlock)
    ]
    user = first + len(results)
    paths: dict[str, str] = {}
    for n, b in enumerate(results):
        result = f"messages[{k}].content[{b}]"
        paths[f"messages[{first + n}]"] = result
        for j, c in content[b].part_blocks().items():
            paths[f"messages[{first + n}].content[{j}]"] = f"{result}.content[{c}]"
    for j, b in enumerate(parts):
        paths[f"messages[{user}].content[{j}]"] = f"messages[{k}].content[{b}]"
    return paths


BILLING_LINE = "x-anthropic-billing-header:"


def _system_turns(content: str | list[Any]) -> list[dict[str, Any]]:
    """The system turn for `content`, or none where it has no text (Claude Code's billing line
    alone, or its empty system message carrying `output_config`)."""
    text = _system_text(content)
    return [{"role": "system", "content": text}] if text else []


def _system_text(content: str | list[Any]) -> str:
    """System text without Claude Code's billing line: its `cc_version=2.1.332.461` suffix is
    derived from the session's first user message, so left in it would make the first tokens of
    every session differ and no session could reuse another's cached system prompt and tools."""
    lines = _text_of(content).split("\n")
    return "\n".join(line for line in lines if not line.startswith(BILLING_LINE))


def _text_of(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(
        block.text for block in content if isinstance(block, TextBlock | DocumentBlock)
    )


def _referenced(messages: list[InputMessage]) -> set[str]:
    """The tools the conversation's `tool_reference` blocks name."""
    return {
        reference.tool_name
        for message in messages
        if isinstance(message.content, list)
        for block in message.content
        if isinstance(block, ToolResultBlock) and isinstance(block.content, list)
        for reference in block.content
        if isinstance(reference, ToolReferenceBlock)
    }


def _user_turns(content: str | list[Any], loads: ToolLoads) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    turns: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, ToolResultBlock):
            result = block.chat_content(loads)
            turns.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": result})
    text = _text_of(content)
    if any(isinstance(block, ImageBlock) for block in content):
        parts = [
            block.chat_part()
            if isinstance(block, ImageBlock)
            else {"type": "text", "text": block.text}
            for block in content
            if isinstance(block, ImageBlock | TextBlock | DocumentBlock)
        ]
        turns.append({"role": "user", "content": parts})
    elif text or not turns:
        turns.append({"role": "user", "content": text})
    return turns


def _assistant_turn(content: str | list[Any]) -> dict[str, Any]:
    turn: dict[str, Any] = {"role": "assistant", "content": _text_of(content)}
    if isinstance(content, str):
        return turn
    calls = [
        {
            "id": block.id,
            "type": "function",
            # The model's characters, not \u escapes: as it wrote them (server/tool_calls.py)
            "function": {
                "name": block.name,
                "arguments": json.dumps(block.input, ensure_ascii=False),
            },
        }
        for block in content
        if isinstance(block, ToolUseBlock)
    ]
    if calls:
        turn["tool_calls"] = calls
    thoughts = "".join(block.thinking for block in content if isinstance(block, ThinkingBlock))
    if thoughts:
        turn["reasoning_content"] = thoughts  # templates that keep reasoning (Qwen3) read it
    return turn


def _chat_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.input_schema or {"type": "object", "properties": {}}
    if tool.strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: ToolChoice | None) -> dict[str, Any]:
    if choice is None:
        return {}
    fields: dict[str, Any] = {}
    if choice.disable_parallel_tool_use:
        fields["parallel_tool_calls"] = False
    if choice.type == "tool":
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        mapped = {"auto": "auto", "any": "required", "none": "none"}
        fields["tool_choice"] = mapped[choice.type]
    return fields

"""A Responses request as a chat request: the conversation's items become chat messages, its
functions chat tools, and its knobs (`max_output_tokens`, `text.format`, `reasoning`) chat's.

Invariants:
- `developer` messages and `instructions` become `system` messages (templates drop roles they do
  not know); the leading ones are merged into one, which is what every template renders. Later
  ones stay where they are: the chat renderer keeps them there where the template renders them,
  else merges them into the leading one (engines/llm/templates.py).
- Consecutive `function_call` items become one assistant message with `tool_calls` (the call
  following an assistant text joins it); a `function_call_output` becomes a `tool` message.
- Past reasoning items are not put back into the prompt.
- A `compaction` item becomes the messages it stands for (its user messages, then its summary
  as a user message: server/schemas/responses.py `CompactionItem`), where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.body import validate
from server.errors import APIError
from server.schemas.chat import ChatCompletionRequest
from server.schemas.responses import (
    NAMESPACE_SEPARATOR,
    AllowedTools,
    CompactionItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    ImagePart,
    InputItem,
    MessageItem,
    NamedFunction,
    ReasoningConfig,
    RefusalPart,
    ResponseCreateRequest,
    TextConfig,
    TextPart,
)

# Efforts that ask for no thinking at all: the template's thinking switch is turned off.
NO_THINKING = frozenset({"none", "minimal"})


def to_chat(
    request: ResponseCreateRequest, items: list[InputItem], functions: list[FunctionTool]
) -> ChatCompletionRequest:
    """The chat request to run for `request`, whose whole conversation is `items`."""
    messages = chat_messages(request.instructions, items)
    if not messages:
        raise APIError(400, "'input' must contain at least one message", param="input")
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "stream": bool(request.stream),
    }
    optional = {
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "parallel_tool_calls": request.parallel_tool_calls,
        "response_format": response_format(request.text),
        "logprobs": None if request.logprobs_count() is None else True,
        "top_logprobs": request.logprobs_count(),
        "chat_template_kwargs": template_kwargs(request.reasoning),
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    choice = request.tool_choice
    if isinstance(choice, AllowedTools):
        functions = _allowed(functions, choice)
    if functions:
        body["tools"] = [
            {"type": "function", "function": f.model_dump(exclude={"type"}, exclude_none=True)}
            for f in functions
        ]
    if isinstance(choice, NamedFunction):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        body["tool_choice"] = choice if isinstance(choice, str) else choice.mode
    return validate(ChatCompletionRequest, body)


def _allowed(functions: list[FunctionTool], choice: AllowedTools) -> list[FunctionTool]:
    """The functions `choice` lets the model call; one it names that `tools` has not is a 400."""
    allowed = choice.names()
    offered = {f.name for f in functions}
    unknown = next((name for name in allowed if name not in offered), None)
    if unknown is not None:
        raise APIError(
            400, f"tool_choice.tools names an unknown function {unknown!r}", param="tool_choice"
        )
    return [f for f in functions if f.name in allowed]


def chat_messages(instructions: str | None, items: list[InputItem]) -> list[dict[str, Any]]:
    return _conversation(instructions, items)[0]


def chat_paths(
    instructions: str | None,
    items: list[InputItem],
    first: int,
    origin: Sequence[int | None] | None = None,
) -> dict[str, str]:
    """Where each of `chat_messages`' messages came from, as the request names it:
    `messages[i]` → `input[k - first]` for the item `k` it began with (`items` from `first` on
    are the request's `input`; those before, the stored conversation `previous_response_id`
    continues, and `instructions`, are not mapped). A message's parts are its item's, in order:
    a `function_call_output`'s are its `output`'s, a `compaction`'s its `encrypted_content`.
    `origin`: where `items` were a selection of the conversation (truncation), each one's index
    in the whole (None: an item the server added, not mapped)."""
    messages, sources = _conversation(instructions, items)
    paths: dict[str, str] = {}
    for i, source in enumerate(sources):
        k = source if source is None or origin is None else origin[source]
        if source is None or k is None or k < first:
            continue
        paths[f"messages[{i}]"] = f"input[{k - first}]"
        content = messages[i]["content"]
        if isinstance(items[source], FunctionCallOutputItem) and isinstance(content, list):
            for j in range(len(content)):
                paths[f"messages[{i}].content[{j}]"] = f"input[{k - first}].output[{j}]"
        elif isinstance(items[source], CompactionItem) and isinstance(content, list):
            for j in range(len(content)):  # its messages' parts are inside its content
                paths[f"messages[{i}].content[{j}]"] = f"input[{k - first}].encrypted_content"
    return paths


def _conversation(
    instructions: str | None, items: list[InputItem]
) -> tuple[list[dict[str, Any]], list[int | None]]:
    """The chat messages, and for each the index of the item it began with (None: the
    instructions)."""
    messages: list[dict[str, Any]] = []
    sources: list[int | None] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
        sources.append(None)
    for k, item in enumerate(items):
        if isinstance(item, MessageItem | CompactionItem):
            for message in [item] if isinstance(item, MessageItem) else item.messages():
                _add_message(messages, message)
        elif isinstance(item, FunctionCallItem):
            _add_call(messages, item)
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output
            images = isinstance(output, list) and item.images()
            content = _chat_parts(output) if isinstance(output, list) and images else item.text()
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": content})
        sources.extend([k] * (len(messages) - len(sources)))  # none where the item merged
    return messages, sources


def _add_message(messages: list[dict[str, Any]], item: MessageItem) -> None:
    role = "system" if item.role == "developer" else item.role
    text = item.text()
    if item.images():
        assert isinstance(item.content, list)
        messages.append({"role": role, "content": _chat_parts(item.content)})
    elif role == "system" and len(messages) == 1 and messages[0]["role"] == "system":
        messages[0]["content"] += "\n\n" + text
    else:
        messages.append({"role": role, "content": text})


def _chat_parts(content: Sequence[TextPart | RefusalPart | ImagePart]) -> list[dict[str, Any]]:
    """A message's or a tool output's parts in order, `input_image` as chat `image_url`
    (server/images.py)."""
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, ImagePart):
            if part.image_url is None:
                raise APIError(
                    400,
                    "input_image needs 'image_url' (file_id needs a Files API, which this "
                    "server does not have)",
                    param="input",
                    code="unsupported_value",
                )
            detail = part.detail if part.detail in ("low", "high") else "auto"
            parts.append(
                {"type": "image_url", "image_url": {"url": part.image_url, "detail": detail}}
            )
        else:
            parts.append(
                {"type": "text", "text": part.text if isinstance(part, TextPart) else part.refusal}
            )
    return parts


def _add_call(messages: list[dict[str, Any]], item: FunctionCallItem) -> None:
    function = {"name": qualified_name(item.namespace, item.name), "arguments": item.arguments}
    call = {"id": item.call_id, "type": "function", "function": function}
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def response_format(text: TextConfig | None) -> dict[str, Any] | None:
    """Chat's `response_format` for `text.format`."""
    fmt = text.format if text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.name is None:
        raise APIError(400, "'text.format.name' is required", param="text.format.name")
    schema = {"name": fmt.name, "schema": fmt.schema_ or {"type": "object"}, "strict": fmt.strict}
    return {
        "type": "json_schema",
        "json_schema": {k: v for k, v in schema.items() if v is not None},
    }


def template_kwargs(reasoning: ReasoningConfig | None) -> dict[str, Any] | None:
    """`reasoning.effort` as the template's variables: its thinking switch and the effort."""
    if reasoning is None or reasoning.effort is None:
        return None
    return {
        "enable_thinking": reasoning.effort not in NO_THINKING,
        "reasoning_effort": reasoning.effort,
    }


def qualified_name(namespace: str | None, name: str) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def split_name(name: str, namespaces: frozenset[str]) -> tuple[str | None, str]:
    """A called function's (namespace, name): names offered as `namespace.name` split back."""
    head, separator, tail = name.partition(NAMESPACE_SEPARATOR)
    if separator and head in namespaces:
        return head, tail
    return None, name

"""What a chat choice's generated text becomes: reasoning, content and tool calls.

One `ChoiceOutput` per choice, fed the text as it is generated: a `<think>` block (reasoning
models) goes to `reasoning_content` and `reasoning` (clients disagree on the name: both are
sent), then, when tools are in play, `<tool_call>` markup becomes tool calls; the rest is
content. Streaming and non-streaming use the same object, so they cannot disagree.
"""

from __future__ import annotations

from typing import Any

from server.reasoning import ReasoningParser
from server.tool_calls import ParsedDeltas, ToolCallParser


class ChoiceOutput:
    """`tool_schemas`: the request's functions and their parameters schemas (none: no tool
    parsing); `untagged`: whether calls written without the model's tags are recognised."""

    def __init__(
        self,
        reasoning: bool,
        think_opened: bool,
        tool_schemas: dict[str, dict[str, Any] | None],
        untagged: bool = True,
    ) -> None:
        self._reasoning = ReasoningParser(think_opened) if reasoning else None
        self._tools = ToolCallParser(tool_schemas, untagged) if tool_schemas else None
        self.reasoning_text = ""
        self.content = ""

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        calls = self._tools.calls if self._tools else []
        return [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Chat `delta` objects for `text` (possibly none while markup is being recognised)."""
        if self._reasoning is None:
            return self._content(text)
        split = self._reasoning.feed(text)
        return self._thoughts(split.reasoning) + self._content(split.content)

    def finish(self) -> list[dict[str, Any]]:
        """Deltas for whatever was held back, at the end of the output."""
        deltas: list[dict[str, Any]] = []
        if self._reasoning is not None:
            split = self._reasoning.finish()
            deltas += self._thoughts(split.reasoning) + self._content(split.content)
        if self._tools is not None:
            deltas += self._tool_deltas(self._tools.finish())
        return deltas

    def _thoughts(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self.reasoning_text += text
        return [{"reasoning_content": text, "reasoning": text}]

    def _content(self, text: str) -> list[dict[str, Any]]:
        if self._tools is None:
            self.content += text
            return [{"content": text}] if text else []
        return self._tool_deltas(self._tools.feed(text))

    def _tool_deltas(self, parsed: ParsedDeltas) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if parsed.content:
            self.content += parsed.content
            deltas.append({"content": parsed.content})
        for call in parsed.calls:
            body: dict[str, Any] = {"index": call.index, "function": {"arguments": call.arguments}}
            if call.id is not None:
                body.update(id=call.id, type="function")
                body["function"]["name"] = call.name
            deltas.append({"tool_calls": [body]})
        return deltas


def collected_message(output: ChoiceOutput, text: str) -> dict[str, Any]:
    """Run a whole non-streamed text through `output`; the message fields it yields."""
    output.feed(text)
    output.finish()
    calls = output.tool_calls
    message: dict[str, Any] = {
        "content": (output.content.strip() or None) if calls else output.content
    }
    if calls:
        message["tool_calls"] = calls
    if output.reasoning_text:
        message["reasoning_content"] = message["reasoning"] = output.reasoning_text
    return message

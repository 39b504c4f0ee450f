"""What a chat choice's generated text becomes: reasoning, content and tool calls.

One `ChoiceOutput` per choice, fed the text as it is generated: a reasoning block (the model's
think tags) goes to `reasoning_content` and `reasoning` (clients disagree on the name: both are
sent), then, when tools are in play, the calls in the model's own format (server/tool_formats/)
become tool calls; the rest is content. gpt-oss's harmony carries reasoning, content and calls
in one format: its parser does all three, tools or not. Streaming and non-streaming use the
same object, so they cannot disagree.

A call's arguments leave here, streamed and whole, as the model wrote them but for raw control
characters inside JSON strings, which go out escaped (server/strict_strings.py): small models
write a file's lines so, and strict clients (`JSON.parse`, jiter) refuse them. Every API reads
calls from here, so this is the one place that does it; a call's streamed fragments still
concatenate to its final arguments.
"""

from __future__ import annotations

import json
from typing import Any

from server.reasoning import ReasoningParser
from server.strict_strings import StrictStrings, strict_json
from server.tool_calls import ParsedDeltas, Thought, ToolCall, ToolCallDelta, new_call_id
from server.tool_formats import CallParser, call_parser


class ChoiceOutput:
    """`reasoning`: the model's think tags (None: no reasoning block), `think_opened`: the
    prompt opened the block; `tool_schemas`: the request's functions and their parameters
    schemas (none: no tool parsing); `untagged`: whether calls written without the model's tags
    are recognised; `tool_format`: the format the model writes calls in; `single_call`: at most
    one call (`parallel_tool_calls: false`): where no grammar held the model to one, the engine
    ended the output after its first (server/first_call.py), and calls after it that this did
    not catch (an untagged list, one fence of several) are left out, streamed or not (as vLLM
    does), while a mistral or pythonic list it cut open after its first call is read as that
    call (server/tool_formats/sections.py); a turn the output limit cut only in what was left
    out finishes as a call (`finish_reason`).
    `forced`: a grammar held the output to calls of these functions (`tool_choice` "required"
    or one named): a call cut (by `max_tokens`, a stop sequence) before its name was whole is
    no content, since its markup is no answer, but a call of the one function it can be, its
    arguments empty, where only one can be (OpenAI's API answers so), else nothing."""

    def __init__(
        self,
        reasoning: tuple[str, str] | None,
        think_opened: bool,
        tool_schemas: dict[str, dict[str, Any] | None],
        untagged: bool = True,
        tool_format: str = "json_tools",
        single_call: bool = False,
        forced: tuple[str, ...] | None = None,
    ) -> None:
        self._single_call = single_call
        self._forced = forced
        harmony = tool_format == "harmony"
        self._reasoning = (
            ReasoningParser(think_opened, reasoning) if reasoning and not harmony else None
        )
        self._tools: CallParser | None = None
        if harmony or tool_schemas:
            self._tools = call_parser(tool_format, tool_schemas, untagged, single_call)
        self.reasoning_text = ""
        self.content = ""
        self._after_call = ""  # what was kept after the first call: text and reasoning
        self._called = False
        self._cut_call: ToolCall | None = None  # `forced`'s call cut before its name
        self._strict: dict[int, StrictStrings] = {}  # each streamed call's arguments, by index

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        calls = self._tools.calls if self._tools else []
        if self._cut_call is not None:
            calls = [*calls, self._cut_call]
        if self._single_call:
            calls = calls[:1]
        return [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": strict_json(c.arguments)},
            }
            for c in calls
        ]

    def finish_reason(self, reason: str) -> str:
        """The choice's `finish_reason` once the output is finished (module `finish_reason`).
        Under `single_call`, an output cut by the limit after a whole first call, with nothing
        but whitespace kept after it, finishes "tool_calls": the limit cut only calls that were
        left out, and the client got all a one-call turn holds (reported "length", an agent
        took the turn for cut short: Responses said `incomplete`, which the OpenAI Agents SDK
        raises on, and Instructor raised on "length")."""
        calls = self.tool_calls
        if reason == "length" and self._single_call and calls and not self._after_call.strip():
            reason = "stop"
        return finish_reason(reason, calls)

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
            parsed = self._tools.finish()
            if self._forced is not None:
                parsed = self._cut_short(parsed, len(self._tools.calls), self._forced)
            deltas += self._tool_deltas(parsed)
        return deltas

    def _cut_short(self, parsed: ParsedDeltas, index: int, forced: tuple[str, ...]) -> ParsedDeltas:
        """The end of a forced output: its text is the markup of a call cut before its name (a
        grammar allows nothing else), which becomes that call where only one function can be."""
        kept = ParsedDeltas([piece for piece in parsed.pieces if not isinstance(piece, str)])
        if parsed.content.strip() and len(forced) == 1:
            self._cut_call = ToolCall(new_call_id(), forced[0], "")
            kept.add_call(ToolCallDelta(index, self._cut_call.id, self._cut_call.name))
        return kept

    def _thoughts(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self.reasoning_text += text
        if self._called:
            self._after_call += text
        return [{"reasoning_content": text, "reasoning": text}]

    def _content(self, text: str) -> list[dict[str, Any]]:
        if self._tools is None:
            self.content += text
            return [{"content": text}] if text else []
        return self._tool_deltas(self._tools.feed(text))

    def _tool_deltas(self, parsed: ParsedDeltas) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        for piece in parsed.pieces:  # text, reasoning and calls in the order the model wrote them
            if isinstance(piece, str):
                self.content += piece
                if self._called:
                    self._after_call += piece
                deltas.append({"content": piece})
                continue
            if isinstance(piece, Thought):
                deltas += self._thoughts(piece.text)
                continue
            self._called = True
            if self._single_call and piece.index > 0:
                continue
            strict = self._strict.setdefault(piece.index, StrictStrings())
            body: dict[str, Any] = {
                "index": piece.index,
                "function": {"arguments": strict.feed(piece.arguments)},
            }
            if piece.id is not None:
                body.update(id=piece.id, type="function")
                body["function"]["name"] = piece.name
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


def finish_reason(reason: str, calls: list[dict[str, Any]]) -> str:
    """The choice's `finish_reason`: "tool_calls" where it stopped after calls whose arguments are
    whole JSON. A call cut inside its arguments (a stop sequence, or the end-of-sequence token,
    met mid-call) leaves "stop": a client that runs the calls of a "tool_calls" choice would run
    it with arguments it cannot parse."""
    if reason != "stop" or not calls:
        return reason
    try:
        for call in calls:
            json.loads(call["function"]["arguments"])
    except (ValueError, RecursionError):  # nested too deeply to parse: no whole JSON either
        return reason
    return "tool_calls"

"""What a chat choice's output becomes in Anthropic's Messages API: content blocks (`thinking`,
`text`, `tool_use`), streamed as `content_block_start` / `_delta` / `_stop` events.

`MessageBlocks` turns the deltas a `ChoiceOutput` yields (reasoning, content, tool-call pieces)
into those events; `assembled(events)` rebuilds the blocks from them, so a non-streamed message
holds exactly what its stream would have said.

Invariants:
- At most one block is open; indexes count from 0; each block is started once, gets its deltas,
  and is stopped once (`finish()` stops the last one).
- A thinking block ends with a `signature_delta` (clients must send a signature back with it);
  with `display: "omitted"` its text is not sent, the block and its signature are.
- Whitespace-only text while no text block is open is held back: sent when more text follows,
  dropped before a tool call or at the end (small models wrap their calls in newlines).
- A `tool_use` block's `input_json_delta`s together are always the beginning of a JSON object
  (server/json_prefix.py): the SDKs parse them after each delta and raise on any other text
  (ending the client's stream), so arguments that are no JSON (`True`, a trailing comma) stream
  only up to where they stop being JSON, and lone surrogate escapes as U+FFFD. (Raw control
  characters in strings, as small models write a file's lines, come escaped from
  server/chat_output.py: those arguments are whole JSON here.)
- `assembled` never fails on a call's JSON: a call cut inside its arguments gets `input: {}`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from server.body import MAX_JSON_DEPTH, nests_deeper
from server.json_prefix import JsonPrefix
from server.tool_calls import without_surrogates

Event = dict[str, Any]


class MessageBlocks:
    def __init__(self, show_thinking: bool = True) -> None:
        self._show_thinking = show_thinking
        self._open: dict[str, Any] | None = None  # the open block's start shape
        self._index = -1
        self._thoughts = ""  # the open thinking block's text, for its signature
        self._held_space = ""
        self._input = JsonPrefix()  # what the open tool_use block's input may stream

    def feed(self, deltas: list[dict[str, Any]]) -> list[Event]:
        """The events for a `ChoiceOutput`'s deltas (possibly none)."""
        events: list[Event] = []
        for delta in deltas:
            if "reasoning_content" in delta:
                events += self._thinking(delta["reasoning_content"])
            elif "content" in delta:
                events += self._text(delta["content"])
            for call in delta.get("tool_calls", []):
                events += self._tool_call(call)
        return events

    def finish(self) -> list[Event]:
        """Stop the open block, if any, at the end of the output."""
        self._held_space = ""
        return self._close()

    def _thinking(self, text: str) -> list[Event]:
        events = self._ensure({"type": "thinking", "thinking": "", "signature": ""})
        self._thoughts += text
        if text and self._show_thinking:
            events.append(self._delta({"type": "thinking_delta", "thinking": text}))
        return events

    def _text(self, text: str) -> list[Event]:
        if self._kind() != "text" and not (self._held_space + text).strip():
            self._held_space += text
            return []
        text, self._held_space = self._held_space + text, ""
        events = self._ensure({"type": "text", "text": ""})
        return [*events, self._delta({"type": "text_delta", "text": text})] if text else events

    def _tool_call(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if call.get("id") is not None:
            self._held_space = ""
            events += self._close()
            name = call["function"]["name"]
            events += self._start({"type": "tool_use", "id": call["id"], "name": name, "input": {}})
            self._input = JsonPrefix()
        arguments = call.get("function", {}).get("arguments", "")
        if arguments and self._kind() == "tool_use":
            partial = self._input.feed(arguments)
            if partial:
                events.append(self._delta({"type": "input_json_delta", "partial_json": partial}))
        return events

    def _kind(self) -> str | None:
        return None if self._open is None else str(self._open["type"])

    def _ensure(self, block: dict[str, Any]) -> list[Event]:
        if self._kind() == block["type"]:
            return []
        return self._close() + self._start(block)

    def _start(self, block: dict[str, Any]) -> list[Event]:
        self._open = block
        self._index += 1
        return [{"type": "content_block_start", "index": self._index, "content_block": block}]

    def _delta(self, delta: dict[str, Any]) -> Event:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        events: list[Event] = []
        if self._kind() == "thinking":
            signature = hashlib.sha256(self._thoughts.encode()).hexdigest()[:32]
            events.append(self._delta({"type": "signature_delta", "signature": signature}))
            self._thoughts = ""
        self._open = None
        return [*events, {"type": "content_block_stop", "index": self._index}]


def assembled(events: list[Event]) -> list[dict[str, Any]]:
    """The content blocks a sequence of block events describes (as the SDK assembles them)."""
    blocks: list[dict[str, Any]] = []
    partial_json: dict[int, str] = {}
    for event in events:
        if event["type"] == "content_block_start":
            blocks.append(dict(event["content_block"]))
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                partial_json[event["index"]] = (
                    partial_json.get(event["index"], "") + delta["partial_json"]
                )
        elif event["type"] == "content_block_stop" and blocks[event["index"]]["type"] == "tool_use":
            blocks[event["index"]]["input"] = tool_input(partial_json.get(event["index"], ""))
    return blocks


def tool_input(arguments: str) -> dict[str, Any]:
    """A `tool_use` block's `input` from its streamed JSON. A call cut inside its arguments (by
    `max_tokens`, or a stop sequence) has no whole object: `{}`, which is also what the SDK
    makes of the cut JSON of a string (its partial parse drops what is unfinished). A `\\ud800`
    escape in it is U+FFFD (`tool_calls.without_surrogates`). Arguments that are no object, or
    nest deeper than a request body may (server/body.py), are `{}` too."""
    try:
        parsed = json.loads(arguments or "{}")
    except (ValueError, RecursionError):  # (nested past what Python parses: no object either)
        return {}
    if not isinstance(parsed, dict) or nests_deeper(parsed, MAX_JSON_DEPTH, arguments):
        return {}  # (deeper than a body may be: what follows would meet the recursion limit)
    return without_surrogates(parsed)

"""gpt-oss's harmony format: the output is a run of messages, each a header, `<|message|>`, a
body and a terminator, e.g.

    <|channel|>analysis<|message|>Need the weather.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json
    <|message|>{"city": "Paris"}<|call|>
    … <|channel|>final<|message|>It is sunny.<|return|>

(wrapped here: no newline is written between the markers). The prompt ends with
`<|start|>assistant`, so the first header has no `<|start|>`; the recipient may also stand
before the channel: `assistant to=functions.f<|channel|>commentary`.
The `analysis` channel is reasoning, `final` (and `commentary` without a recipient: a preamble
to the user) is content, and a message to `functions.NAME` is a call of NAME with the body as
its JSON arguments. `<|call|>` and `<|return|>` end the turn (the engine stops on them and
does not emit them); `<|end|>` ends a message.

Invariants: any chunking gives the same reasoning, content and calls, in the same order (a
reasoning after a preamble stays after it); header markup never reaches either field;
reasoning and content stream as they come (a possible partial terminator held back), a call
when its message ends. Output that does not begin with a header (a model
ignoring its format) is content as it stands; a call whose body is not a JSON object is
content (nothing is lost). Cheap per piece: the buffer grows in place and a marker is searched
for from where the last search stopped, so a long call costs no more per token than a short one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from server.body import MAX_JSON_DEPTH, nests_deeper
from server.tool_calls import ParsedDeltas, ToolCall, ToolCallDelta, new_call_id, partial_suffix

MESSAGE = "<|message|>"
TERMINATORS = ("<|end|>", "<|call|>", "<|return|>")
_LONGEST_TERMINATOR = max(map(len, TERMINATORS))
_HEADER_OPENERS = ("<|start|>", "<|channel|>", "assistant", "to=")
_CHANNEL = re.compile(r"<\|channel\|>\s*([\w-]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


class HarmonyParser:
    """`schemas`: the request's functions (a message to a function not among them, or with no
    tools at all, is content)."""

    def __init__(self, schemas: dict[str, dict[str, Any] | None]) -> None:
        self._schemas = schemas
        self._state = "header"  # header → body | plain (not harmony: all content)
        self._kind = ""  # the open message's: reasoning | content | call
        self._name = ""  # a call's function
        self._buffer = ""
        self._harmony = False  # (header) it begins with a whole header opener
        self._searched = 0  # where the next marker (or terminator) may begin, not found before
        self._calls: list[ToolCall] = []

    @property
    def calls(self) -> list[ToolCall]:
        return list(self._calls)

    def feed(self, text: str) -> ParsedDeltas:
        buffer, self._buffer = self._buffer, ""
        buffer += text  # its only reference: CPython extends it in place, no copy of the output
        self._buffer = buffer
        out = ParsedDeltas()
        while self._buffer:
            if self._state == "plain":
                out.add_text(self._buffer)
                self._buffer = ""
            elif self._state == "header":
                if not self._read_header():
                    break
            elif not self._read_body(out):
                break
        return out

    def finish(self) -> ParsedDeltas:
        """End of output: an open message ends here; a header never finished is content."""
        out = ParsedDeltas()
        if self._state == "body":
            self._end_message(self._buffer, out)
        else:
            out.add_text(self._buffer)
        self._buffer, self._state, self._harmony, self._searched = "", "header", False, 0
        return out

    def _read_header(self) -> bool:
        """Consume a complete header (False: it is not complete yet)."""
        if not self._harmony:
            head = self._buffer.lstrip()
            if not any(head.startswith(o) or o.startswith(head) for o in _HEADER_OPENERS):
                self._state = "plain"
                return True
            self._harmony = head.startswith(_HEADER_OPENERS)  # (then whatever follows it)
        end = self._buffer.find(MESSAGE, self._searched)
        if end < 0:
            self._searched = max(0, len(self._buffer) - len(MESSAGE) + 1)
            return False
        header, self._buffer = self._buffer[:end], self._buffer[end + len(MESSAGE) :]
        self._harmony, self._searched = False, 0
        channel = _CHANNEL.search(header)
        recipient = _RECIPIENT.search(header)
        name = recipient.group(1).removeprefix("functions.") if recipient else ""
        if recipient and name in self._schemas:
            self._kind, self._name = "call", name
        elif channel is not None and channel.group(1) == "analysis":
            self._kind = "reasoning"
        else:
            self._kind = "content"
        self._state = "body"
        return True

    def _read_body(self, out: ParsedDeltas) -> bool:
        """Consume body text; False when what is left may be a terminator's start."""
        found = [(i, t) for t in TERMINATORS if (i := self._buffer.find(t, self._searched)) >= 0]
        if found:
            end, terminator = min(found)
            body, self._buffer = self._buffer[:end], self._buffer[end + len(terminator) :]
            self._end_message(body, out)
            self._state, self._searched = "header", 0
            return True
        if self._kind == "call":  # a call's arguments go out whole, when its message ends
            self._searched = max(0, len(self._buffer) - _LONGEST_TERMINATOR + 1)
            return False
        held = max(partial_suffix(self._buffer, t) for t in TERMINATORS)
        self._send(self._buffer[: len(self._buffer) - held], out)
        self._buffer = self._buffer[len(self._buffer) - held :]
        return False

    def _end_message(self, body: str, out: ParsedDeltas) -> None:
        if self._kind != "call":
            self._send(body, out)
            return
        try:
            arguments = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested past what Python parses
            arguments = None
        if not isinstance(arguments, dict) or nests_deeper(arguments, MAX_JSON_DEPTH, body):
            out.add_text(body)
            return
        call = ToolCall(new_call_id(), self._name, body.strip())
        index = len(self._calls)
        out.add_call(
            ToolCallDelta(index, call.id, call.name),
            ToolCallDelta(index, arguments=call.arguments),
        )
        self._calls.append(call)

    def _send(self, text: str, out: ParsedDeltas) -> None:
        if self._kind == "reasoning":
            out.add_reasoning(text)
        else:
            out.add_text(text)

"""Streaming parser for the formats whose calls sit between a start and an end marker
(engines/llm/chat_formats.py `SECTIONS`), each section's text read by the format's body parser
(server/tool_formats/bodies.py) — the way mlx-lm's server splits its text state machine into
normal and tool text and parses each tool text when it closes.

Invariants (those of server/tool_calls.py's `ToolCallParser`, which serves json_tools):
- Fed text in any chunking, it emits the same content and the same calls.
- Markers never reach content: text that may be the start of the start marker is held back
  until it is known not to be; whitespace between or after calls is no content.
- A section becomes its calls when its end marker arrives (a format with no end marker,
  Mistral's, and a section still open at the end: when the output ends). Each call is sent as
  one delta with its id and name, then one with its arguments as JSON text (the model's own id
  where the format writes one).
- In a one-call turn (`single_call`), a section the output ended in that is a list cut after
  whole calls (mistral's, pythonic's: bodies.py `CUT_LISTS`) is those calls: the end watch
  (server/first_call.py) stops such an output after its first call, before the list closes.
- A section that does not parse is content, markers included: nothing the model wrote is lost.
  Arguments nested deeper than a request body may be (server/body.py `MAX_JSON_DEPTH`) do not
  parse: the parser never raises on what the model writes.
- An output that is nothing but untagged JSON calls is recognised as ToolCallParser does: held
  back only while it may still be such calls, then read on as text with sections.
- Cheap per piece: the buffer grows in place, a section's end marker is searched for from where
  the last search stopped, and whitespace before the first character or held after a call is
  read once, so a long section costs no more per token than a short one (its body is parsed
  once, when it closes).
"""

from __future__ import annotations

import json
from typing import Any

from engines.llm.chat_formats import SECTIONS
from server.body import MAX_JSON_DEPTH, nests_deeper
from server.tool_calls import (
    ParsedDeltas,
    ToolCall,
    ToolCallDelta,
    ToolCallParser,
    may_be_untagged,
    new_call_id,
    partial_suffix,
    text_before,
    without_surrogates,
)
from server.tool_formats.bodies import BODIES, CUT_LISTS, ParsedCall
from server.tool_formats.calls import Tools


class SectionParser:
    def __init__(
        self,
        tool_format: str,
        schemas: dict[str, dict[str, Any] | None],
        untagged: bool = True,
        single_call: bool = False,
    ) -> None:
        self._start, self._end = SECTIONS[tool_format]
        self._format = tool_format
        self._single_call = single_call
        self._schemas = schemas
        self._tools = [
            {"type": "function", "function": {"name": name, "parameters": parameters}}
            for name, parameters in schemas.items()
        ]
        self._untagged = untagged and bool(schemas)
        # start → text | bare (the output may be untagged calls: held back) → text (it is not)
        self._mode = "start"
        self._bare: ToolCallParser | None = None  # reads the held-back output, in bare mode
        self._buffer = ""
        self._lead_end = 0  # (start mode) the buffer up to here: only whitespace
        self._in_section = False
        self._end_from = 0  # (in a section) where its end marker may begin, not found before
        self._after_call = False  # nothing but whitespace was written since the last call
        self._blank = 0  # (after a call) the buffer up to here: only whitespace
        self._calls: list[ToolCall] = []

    @property
    def calls(self) -> list[ToolCall]:
        return list(self._calls)

    def feed(self, text: str) -> ParsedDeltas:
        buffer, self._buffer = self._buffer, ""
        buffer += text  # its only reference: CPython extends it in place, no copy of the output
        self._buffer = buffer
        out = ParsedDeltas()
        if self._mode == "start":
            if not self._classify():
                return out
            if self._mode == "bare":
                self._bare, text = ToolCallParser(self._schemas), self._buffer
        if self._bare is not None:
            self._bare.feed(text)
            if self._bare.holding:
                return out
            self._bare, self._mode = None, "text"  # no untagged calls: read on as text
        while True:
            if not self._in_section:
                content, self._buffer, opened = text_before(
                    self._buffer, self._start, self._after_call, self._blank
                )
                out.add_text(content)
                self._after_call = self._after_call and not content
                self._blank = 0
                if not opened:
                    if self._after_call:  # held whitespace: read once, however long
                        self._blank = len(self._buffer) - partial_suffix(self._buffer, self._start)
                    return out
                self._in_section, self._end_from = True, 0
            if not self._end:
                return out  # the section runs to the end of the output
            end = self._buffer.find(self._end, self._end_from)
            if end < 0:
                self._end_from = max(self._end_from, len(self._buffer) - len(self._end) + 1)
                return out
            body, self._buffer = self._buffer[:end], self._buffer[end + len(self._end) :]
            self._in_section = False
            self._close(body, out, closed=True)

    def finish(self) -> ParsedDeltas:
        """End of output: flush held-back text; an open section is parsed as it stands."""
        if self._bare is not None:
            calls = self._bare.finish_untagged()
            if calls is not None:
                self._calls += self._bare.calls
                self._buffer = ""
                return calls
            self._bare, self._mode = None, "text"
        out = self.feed("")  # text mode: what the buffer still holds is read (start: nothing)
        if self._in_section:
            self._in_section = False
            self._close(self._buffer, out, closed=False)
        elif self._buffer.strip() or not self._after_call:
            out.add_text(self._buffer)
        self._buffer = ""
        return out

    def _classify(self) -> bool:
        """Decide, from the output's first characters, whether it may be untagged JSON (held
        back) or is text with sections; False while it cannot tell yet."""
        head = self._buffer[self._lead_end :].lstrip()
        if not head:
            self._lead_end = len(self._buffer)  # (a flood of newlines is read once)
            return False
        if self._start.startswith(head) and head != self._start:
            return False
        untagged: bool | None = False
        if self._untagged and not head.startswith(self._start):
            untagged = may_be_untagged(head)
        if untagged is None:
            return False
        self._mode = "bare" if untagged else "text"
        return True

    def _close(self, body: str, out: ParsedDeltas, closed: bool) -> None:
        calls = section_calls(self._format, body, self._tools, self._single_call and not closed)
        if calls is None:
            out.add_text(f"{self._start}{body}{self._end if closed else ''}")
            self._after_call = False
            return
        for call in calls:
            self._emit(call, out)

    def _emit(self, parsed: ParsedCall, out: ParsedDeltas) -> None:
        call = ToolCall(  # the model's characters, but no lone surrogate: UTF-8 cannot carry it
            without_surrogates(parsed.id) or new_call_id(),
            without_surrogates(parsed.name),
            json.dumps(without_surrogates(parsed.arguments), ensure_ascii=False),
        )
        index = len(self._calls)
        out.add_call(ToolCallDelta(index, call.id, call.name))
        out.add_call(ToolCallDelta(index, arguments=call.arguments))
        self._calls.append(call)
        self._after_call = True


def section_calls(
    tool_format: str, body: str, tools: Tools | None, cut: bool
) -> list[ParsedCall] | None:
    """The calls in a section's text, as this parser reads them (None: it is content). `cut`:
    the output ended in the section, in a one-call turn."""
    read_cut = CUT_LISTS.get(tool_format) if cut else None
    try:
        calls = read_cut(body, tools) if read_cut else None
        if calls is None:
            calls = BODIES[tool_format](body, tools)
    except RecursionError:  # JSON nested past what Python parses: no call, as json_tools'
        return None
    if calls is not None and any(
        nests_deeper(call.arguments, MAX_JSON_DEPTH, body) for call in calls
    ):
        return None  # deeper than a body may be: no call (server/tool_calls.py `_too_deep`)
    return calls

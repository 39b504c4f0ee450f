"""Where a one-call turn ends: the end watch (engines/types.py `GenerationRequest.end_watch`)
`prepare_chat` hands the engine when the client wants at most one tool call
(`parallel_tool_calls: false`; Messages: `disable_parallel_tool_use`) and no grammar holds the
model to one. The output ends just after the first call, so the calls after it are neither
generated nor counted (the edge, `ChoiceOutput`, would leave them out).

A call ends at its format's marker (engines/llm/chat_formats.py `CALL_ENDS`) after its section's
opening (`SECTIONS`), where the edge reads a call in the section so far (the edge reads a section
with none, or a `<tool_call>` that is no call, as text: the watch looks on for the next marker, up
to `_CHECKS` times); in the formats that list their calls with no end of each (mistral,
pythonic), where the first call in the list closes (server/first_listed_call.py); or,
untagged, at the end of a bare JSON call object (after a `<|python_tag|>` / `[TOOL_CALLS]`
prefix, as llama3 writes its calls) or of the ```json fence holding one (Qwen2.5-Coder writes
its calls so, one object a line, more often than in its tags). A reasoning block the output
opens (or the prompt left open) is passed first: a marker written while thinking ends nothing.

Invariants: runs on the engine thread (pure Python, no MLX); it ends an output only after a
call: a tagged, section, listed or untagged call that the edge's parser reads as one (with the
request's functions, which type a section's values). It never raises on what the model writes
(JSON nested too deeply to parse is no call): an exception here would fail the engine step, and
with it every request in the batch. Where it ends does not depend on how the output is cut into
pieces (the earlier of a marker and an untagged call's end). Cheap per piece: each character is
read once (the first value is decoded once, when its brackets balance; a marker is searched for
in the new text only; a section or a `<tool_call>` is read at its markers, a bounded number of
times), so a long output costs no more per token than a short one.
"""

from __future__ import annotations

import json
from typing import Any

from engines.llm.chat_formats import CALL_ENDS, SECTIONS
from engines.llm.tools import CLOSE, MISTRAL_TAG, OPEN, PYTHON_TAG
from server.first_listed_call import LISTED, FirstListedCallEnd
from server.tool_calls import ToolCallParser
from server.tool_formats.sections import section_calls
from server.untagged import FENCE_HEADER, ValueEnd

_DECODER = json.JSONDecoder(strict=False)  # as the edge reads calls (server/tool_calls.py)
# Markers whose section the edge reads no call in, before the watch stops checking them (the
# output runs on): each check reads the section so far, so a bound keeps the watch linear.
_CHECKS = 8


class FirstCallEnd:
    """One choice's watch: fed each piece of its text, the characters of the piece to keep
    where the first call ends in it (None: go on). `schemas`: the request's functions, by
    which the edge types a section's values (one that does not convert is no call: the section
    is text) and reads untagged calls, where `untagged` (None: no functions)."""

    def __init__(
        self,
        tool_format: str,
        schemas: dict[str, dict[str, Any] | None] | None,
        reasoning: tuple[str, str] | None,
        think_opened: bool,
        untagged: bool = True,
    ) -> None:
        self._format = tool_format
        self._marker = CALL_ENDS.get(tool_format)
        self._opener, self._closer = SECTIONS[tool_format] if self._marker else ("", "")
        self._opened: int | None = None  # just after the open section's opening marker
        self._marked = 0  # where markers are searched for: after the last that ended no call
        # (else it ends a call inside the section)
        self._closes_section = self._marker == self._closer
        self._checks = _CHECKS
        self._listed = FirstListedCallEnd(tool_format) if tool_format in LISTED else None
        self._tools = [
            {"type": "function", "function": {"name": name, "parameters": parameters}}
            for name, parameters in (schemas or {}).items()
        ]  # as the edge's SectionParser passes them
        self._schemas = schemas if untagged else None  # (None: no untagged call to end at)
        # The section formats' edge parser (server/tool_formats/sections.py) reads a section with
        # no call as text, and `<|python_tag|>` as text; server/tool_calls.py (json_tools,
        # llama3) strips it before untagged calls.
        self._sections = tool_format in SECTIONS and tool_format != "json_tools"
        self._prefixes = () if self._sections else (PYTHON_TAG, MISTRAL_TAG)
        self._reasoning = reasoning
        self._thinking = think_opened  # inside the reasoning block (known open)
        self._text = ""
        self._start = 0  # where calls may begin: after the reasoning block
        self._searched = 0  # where the reasoning block's closing may begin, not found before
        self._head: int | None = None  # where the output's first value (or fence) begins
        self._scanned = 0  # where reading that fence goes on
        self._value: ValueEnd | None = None  # reads the first value, where it is an object

    def __call__(self, piece: str) -> int | None:
        before = len(self._text)
        text, self._text = self._text, ""
        text += piece  # its only reference: CPython extends it in place, no copy of the output
        self._text = text
        if not self._past_reasoning():
            return None
        end = self._tagged_end(before)
        if "}" in piece or "`" in piece:  # the earlier end, as where the pieces are smaller
            untagged = self._untagged_end()
            end = untagged if end is None or (untagged is not None and untagged < end) else end
        return end - before if end is not None and end > before else None

    def _past_reasoning(self) -> bool:
        if self._reasoning is None:
            return True
        opening, closing = self._reasoning
        if not self._thinking:
            head = self._text.lstrip()
            if opening.startswith(head):
                return False  # it may still open one
            if not head.startswith(opening):
                self._reasoning = None
                return True
            self._thinking = True
        close = self._text.find(closing, self._searched)
        if close < 0:
            self._searched = max(self._searched, len(self._text) - len(closing) + 1)
            return False
        self._start, self._reasoning = close + len(closing), None
        return True

    def _tagged_end(self, before: int) -> int | None:
        if self._listed is not None:
            return self._listed(self._text, self._start, before)
        found = -1  # the first marker at or after where the last search began
        while self._marker is not None:
            if self._opened is None:  # a marker before any call opened ends none (the edge: text)
                since = max(self._start, self._marked, before - len(self._opener) + 1)
                opener = self._text.find(self._opener, since)
                if opener < 0:
                    return None
                self._opened = opener + len(self._opener)
            since = max(self._opened, self._marked, before - len(self._marker) + 1)
            if found < since:
                found = self._text.find(self._marker, since)
            if found < 0:
                return None
            if not self._closes_section:
                # The section closed before this marker (after one that ended no call): the edge
                # reads what follows its end as text, not as this section's. On to the next.
                closed = self._text.find(self._closer, max(self._opened, self._marked), found)
                if closed >= 0:
                    self._marked, self._opened = closed + len(self._closer), None
                    continue
            end = found + len(self._marker)
            if self._reads_a_call(found, end):
                return end
            self._marked = end
            if self._closes_section:
                self._opened = None
        return None

    def _reads_a_call(self, found: int, end: int) -> bool:
        """Whether the edge reads a call in the section up to the marker at `found` (the
        section closed by it, or cut just after it)."""
        body = self._text[self._opened : found if self._closes_section else end]
        if self._sections:
            cut = not self._closes_section
            reads = bool(section_calls(self._format, body, self._tools, cut))
        else:  # json_tools: one `<tool_call>`'s body
            reads = _tagged_call(body)
        if reads:
            return True
        self._checks -= 1
        if self._checks == 0:
            self._marker = None  # the output runs on to its end
        return False

    def _untagged_end(self) -> int | None:
        if self._schemas is None:
            return None
        if self._head is None:
            head = self._text[self._start :].lstrip()
            for prefix in self._prefixes:
                head = head.removeprefix(prefix)
            head = head.lstrip()
            if not head or any(prefix.startswith(head) for prefix in self._prefixes):
                return None  # (a prefix not yet whole)
            self._head = self._scanned = len(self._text) - len(head)
        if self._text.startswith("{", self._head):
            self._value = self._value or ValueEnd(self._head)
            end = self._value.end(self._text)
        elif self._text.startswith("```", self._head):
            end = self._fence_end()
        else:
            return None
        if end is None:
            return None
        head = self._text[self._head : end]
        try:
            if head.startswith("{") and _DECODER.raw_decode(head)[1] != len(head):
                end = None
        except (ValueError, RecursionError):  # no JSON, or nested deeper than the parser goes
            end = None
        if end is not None:
            parser = ToolCallParser(self._schemas)
            parser.feed(self._text[self._start : end])  # with its prefix, as the edge reads it
            if parser.finish_untagged() is not None and len(parser.calls) == 1:
                return end  # (a tagged call in a fence is no untagged call)
        self._schemas = None  # the output's first object (or fence) is no single call
        return None

    def _fence_end(self) -> int | None:
        """Just after a ```json fence's closing ``` (None: not yet)."""
        assert self._head is not None
        line_end = self._text.find("\n", self._head)
        if line_end < 0:
            return None
        if FENCE_HEADER.fullmatch(self._text, self._head, line_end) is None:
            self._schemas = None  # no ```json fence: no untagged call
            return None
        close = self._text.find("```", max(self._scanned, line_end + 1))
        if close < 0:
            self._scanned = max(line_end + 1, len(self._text) - 2)
            return None
        return close + 3


def _tagged_call(body: str) -> bool:
    """Whether json_tools' edge parser reads `<tool_call>{body}</tool_call>` as a call (a body
    with no whole head that does not parse is text there: a model's malformed first call, after
    which it may still write a good one)."""
    parser = ToolCallParser(untagged=False)
    parser.feed(f"{OPEN}{body}{CLOSE}")
    parser.finish()
    return bool(parser.calls)

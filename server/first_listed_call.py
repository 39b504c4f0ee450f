"""Where the first call ends in the formats that write a turn's calls with no end of their own
(server/first_call.py's watch asks, for a one-call turn): mistral's `[TOOL_CALLS]` followed by a
JSON list of call objects or by `NAME[ARGS]{…}` calls, and pythonic's
`<|tool_call_start|>[f(k=v), …]`.

The first call ends where its object (mistral) or its argument list (pythonic) closes: where the
bracket that opened it balances, strings skipped (server/untagged.py `ValueEnd`; pythonic's with
Python's quotes). The output cut there is a list cut open after its first call, which the edge
reads as that call in a one-call turn (server/tool_formats/sections.py, bodies.py `CUT_LISTS`),
or mistral's `NAME[ARGS]{…}`, which it reads so anyway.

Invariants: the watch ends an output only where the edge reads the section up to that point as
exactly one call (checked once, by the edge's own reading, `section_calls`): never where it would
read text, or a first call of other characters. A section that begins otherwise (no list, no
`NAME[ARGS]{`, a first value that is no call) is left to run on. Linear: each character after the
section's opening is read once (the head of the first call, up to `_HEAD_LIMIT` characters, once
a piece until it is known), the edge's reading runs once; it never raises on what the model
writes.
"""

from __future__ import annotations

import re

from engines.llm.chat_formats import SECTIONS
from server.tool_formats.sections import section_calls
from server.untagged import ValueEnd

_PYTHON_STRUCTURE = re.compile(r"[\"'()\[\]{}]")
_PYTHON_STRINGS = {'"': re.compile(r'["\\]'), "'": re.compile(r"['\\]")}

# The section's text up to the bracket that opens the first call's value (the bracket last), and
# what may still become that (a whole match of its start).
_HEADS = {
    "mistral": (
        re.compile(r"\[\s*\{|[\w-]+\s*\[ARGS\]\s*\{"),  # the parser's `NAME[ARGS]`, then `{`
        re.compile(r"\[\s*|[\w-]+\s*(?:\[(?:A(?:R(?:G(?:S(?:\]\s*)?)?)?)?)?)?"),
    ),
    "pythonic": (re.compile(r"\[\s*[\w.]+\s*\("), re.compile(r"\[\s*(?:[\w.]+\s*)?")),
}
LISTED = tuple(_HEADS)
_HEAD_LIMIT = 256  # characters: a function's name is at most 64 in OpenAI's API


class FirstListedCallEnd:
    """One output's watch for `tool_format` (one of `LISTED`): called with the output so far,
    where calls may begin in it (after a reasoning block) and where the new piece begins, the
    first call's end once known (None: not yet, or never)."""

    def __init__(self, tool_format: str) -> None:
        self._format = tool_format
        self._opener, self._closer = SECTIONS[tool_format]
        self._head, self._may_head = _HEADS[tool_format]
        self._python = tool_format == "pythonic"
        self._opened: int | None = None  # just after the section's opening marker
        self._value: ValueEnd | None = None  # the first call's value, once its head is read
        self._over = False  # no first call to end at: the output runs on

    def __call__(self, text: str, start: int, before: int) -> int | None:
        if self._over:
            return None
        if self._opened is None:
            found = text.find(self._opener, max(start, before - len(self._opener) + 1))
            if found < 0:
                return None
            self._opened = found + len(self._opener)
        if self._value is None:
            self._value = self._first_value(text, self._opened)
            if self._value is None:
                return None
        end = self._value.end(text)
        if end is None:
            return None
        self._over = True
        section = text[self._opened : end]
        if self._closer and self._closer in section:
            return None  # (in a string:) the edge's section ends there, before this call does
        calls = section_calls(self._format, section, None, cut=True)
        return end if calls is not None and len(calls) == 1 else None

    def _first_value(self, text: str, opened: int) -> ValueEnd | None:
        """A scanner from the bracket that opens the first call's value (None: not yet read)."""
        section = text[opened : opened + _HEAD_LIMIT]
        head = section.lstrip()
        found = self._head.match(head)
        if found is None:
            if len(section) == _HEAD_LIMIT or (head and not self._may_head.fullmatch(head)):
                self._over = True
            return None
        start = opened + len(section) - len(head) + found.end() - 1
        if self._python:
            return ValueEnd(start, _PYTHON_STRUCTURE, _PYTHON_STRINGS)
        return ValueEnd(start)

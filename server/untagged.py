"""When an output held back as possibly untagged tool calls (server/tool_calls.py: bare JSON
call objects, several, a list, or one ```json fence holding them) can no longer be them, so the
parser lets it go as text while the model is still writing, instead of at the end.

`UntaggedWatch` reads the output once, left to right, and rules calls out at the first point
where no continuation could make the whole output calls:
- a whole JSON value (an object, a list, or an object in a top-level list) that is not calls of
  known functions with valid arguments (or is no valid JSON, or nests too deeply);
- after whole values, a character that is neither a separator (whitespace, `;`, `,`) nor the
  start of another object or list (in a fence: nor its closing ```, after which only
  whitespace may follow); a fence whose first line is not ```json or ```;
- a string or a list as an element of a top-level list;
- an object whose first "name" member is whole and names no known function (or is no string),
  before the object closes; the first "name" decides, also where a later duplicate key would
  win in `json.loads` (models write none; the parser reads such an object as no call at the
  end too, through this watch, so that the verdict never depends on chunking).

Invariants: a verdict depends on the text only, never on how it was cut into pieces: each rule
looks only at the text up to the point where it applies, and once calls are ruled out they
stay so. It rules out only outputs the parser's end-of-output reading (`finish_untagged`) would not
take for calls. Cheap per piece: the new text is searched for JSON's structural characters only;
a value is decoded once, when it closes; an object's members are walked only when a string
closes at its level, until its name is read. It never raises on what the model writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from server.body import MAX_JSON_DEPTH, nests_deeper

_BETWEEN = re.compile(r"[^ \t\r\n;,]")  # between values: the next character that is no separator
# JSON's structural characters (read outside strings) and what ends or escapes inside a string;
# the first line of a fence that may hold JSON. Shared by every incremental reader of model JSON
# (here, server/tagged_call.py, server/first_call.py).
JSON_STRUCTURE = re.compile(r'["{}\[\]]')
JSON_IN_STRING = re.compile(r'["\\]')
FENCE_HEADER = re.compile(r"```(?:json)?[ \t]*")
_DECODER = json.JSONDecoder(strict=False)  # as the parser reads calls (tool_calls.py)
_JSON_STRINGS = {'"': JSON_IN_STRING}


class ValueEnd:
    """Where a bracketed value that a text holds from `start` ends: just after the bracket that
    balances its first, strings skipped. Read as the text grows (each call's text extends the
    last's), each character once: the one small scanner of the incremental readers that want
    only a value's end (server/tagged_call.py's argument streaming, the one-call end watch in
    server/first_call.py and server/first_listed_call.py). `structure` finds the brackets and
    string quotes, `strings` what ends or escapes a string, by its opening quote: JSON's by
    default (pythonic calls pass Python's)."""

    def __init__(
        self,
        start: int,
        structure: re.Pattern[str] = JSON_STRUCTURE,
        strings: dict[str, re.Pattern[str]] = _JSON_STRINGS,
    ) -> None:
        self._seen = start
        self._structure = structure
        self._strings = strings
        self._string: re.Pattern[str] | None = None  # inside a string: what ends or escapes it
        self._depth = 0
        self._end: int | None = None

    def end(self, text: str) -> int | None:
        at = self._seen
        while self._end is None:
            found = (self._string or self._structure).search(text, at)
            if found is None or (found[0] == "\\" and found.end() == len(text)):
                self._seen = len(text) if found is None else found.start()
                return None  # (an escaped character still to come: read on from its backslash)
            char = found[0]
            at = found.end() + (char == "\\")
            if self._string is not None:
                if char != "\\":  # the string's own quote: `strings` finds no other
                    self._string = None
            elif char in self._strings:
                self._string = self._strings[char]
            elif char in "([{":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._end = at
        return self._end


class UntaggedWatch:
    """One held-back output's watch. `start`: where its JSON (or fence) begins in the text it
    is given (after whitespace and a `<|python_tag|>` / `[TOOL_CALLS]` prefix); `is_call`: a
    decoded value is a call of a known function with valid arguments; `known`: a decoded
    "name" names a known function."""

    def __init__(self, start: int, is_call: Callable[[Any], bool], known: Callable[[Any], bool]):
        self._start = start
        self._is_call = is_call
        self._known = known
        self._out = False
        self._seen = start  # where reading goes on
        self._fenced: bool | None = None  # None: the fence's first line is not whole yet
        self._closed = False  # the fence's closing ``` was read
        self._depth = 0
        self._in_string = False
        self._in_list = False  # the top-level value being read is a list
        self._value = 0  # where the top-level value being read starts
        self._element = 0  # where the object being read in a top-level list starts
        self._unnamed: int | None = None  # the depth of an object whose "name" is not read yet
        self._member = 0  # where that object's next member not read yet starts

    def rules_out(self, text: str) -> bool:
        """Whether `text` (the output so far: each call's text extends the last's) can no
        longer be untagged calls."""
        if not self._out and self._header(text):
            self._read(text)
        return self._out

    def _header(self, text: str) -> bool:
        """Read a fence's first line; False while it is not whole (or once it rules out)."""
        if self._fenced is not None:
            return True
        if not text.startswith("```", self._start):
            self._fenced = False
            return True
        end = text.find("\n", self._start)
        header = text[self._start : len(text) if end < 0 else end]
        if end < 0:
            self._out = not ("```json".startswith(header) or FENCE_HEADER.fullmatch(header))
            return False
        self._out = FENCE_HEADER.fullmatch(header) is None
        self._fenced, self._seen = True, end + 1
        return not self._out

    def _read(self, text: str) -> None:
        at = self._seen
        while at < len(text) and not self._out:
            if self._closed:
                self._out = bool(text[at:].strip())
                at = len(text)
            elif self._in_string:
                found = JSON_IN_STRING.search(text, at)
                if found is None:
                    at = len(text)
                elif found[0] == "\\":
                    if found.end() == len(text):
                        break  # the escaped character is still to come: read on from here
                    at = found.end() + 1
                else:
                    self._in_string, at = False, found.end()
                    if self._depth == self._unnamed:
                        self._read_name(text, at)
            elif self._depth == 0:
                found = _BETWEEN.search(text, at)
                if found is None:
                    at = len(text)
                elif found[0] == "`" and self._fenced:
                    ticks = text[found.start() : found.start() + 3]
                    if not "```".startswith(ticks):
                        self._out = True
                    elif len(ticks) < 3:
                        at = found.start()
                        break  # the rest of the closing ``` is still to come
                    else:
                        self._closed, at = True, found.end() + 2
                elif found[0] in "{[":
                    self._value, at = found.start(), found.end()
                    self._depth, self._in_list = 1, found[0] == "["
                    self._unnamed = None if self._in_list else 1
                    self._member = at
                else:
                    self._out = True
            else:
                found = JSON_STRUCTURE.search(text, at)
                if found is None:
                    at = len(text)
                    continue
                at = found.end()
                element = self._in_list and self._depth == 1
                if found[0] == '"':
                    self._in_string = True
                    self._out = element  # a string in a top-level list is no call
                elif found[0] in "{[":
                    self._depth += 1
                    if element:
                        self._out = found[0] == "["  # a list in a top-level list is no call
                        self._element, self._unnamed, self._member = found.start(), 2, at
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        self._out = not self._calls(text[self._value : at])
                    elif self._in_list and self._depth == 1:
                        self._out = not self._calls(text[self._element : at])
        self._seen = at

    def _calls(self, value_text: str) -> bool:
        """Whether a whole value (its brackets balance) is calls: a call object, or a top-level
        list of objects (each read as it closed)."""
        try:
            value, end = _DECODER.raw_decode(value_text)
        except (ValueError, RecursionError):
            return False
        if end != len(value_text):
            return False
        if isinstance(value, dict | list) and nests_deeper(value, MAX_JSON_DEPTH, value_text):
            return False
        if isinstance(value, list):  # each object in it was read as it closed
            return all(isinstance(item, dict) for item in value)
        return self._is_call(value)

    def _read_name(self, text: str, end: int) -> None:
        """Read on through the members of the open object, up to `end` (just after a string at
        its level), for its first "name"; once whole, it must name a known function. Each
        whole member is read once."""
        start = self._member
        members = text[start:end]
        at = 0
        while True:
            at = _past_space(members, at)
            if not members.startswith('"', at):
                return
            try:
                key, at = _DECODER.raw_decode(members, at)
                at = _past_space(members, at)
                if not members.startswith(":", at):
                    return
                value, at = _DECODER.raw_decode(members, _past_space(members, at + 1))
            except (ValueError, RecursionError):
                return  # not whole yet (or no JSON: its end will say)
            if key == "name":
                self._unnamed = None
                self._out = not self._known(value)
                return
            at = _past_space(members, at)
            if not members.startswith(",", at):
                return
            at += 1
            self._member = start + at


def _past_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at

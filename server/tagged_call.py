"""One `<tool_call>` JSON call of server/tool_calls.py's `ToolCallParser`, read while the model
writes it: where its head `{"name": "…", "arguments":` ends (the name is streamed from there),
and how much of its arguments object may be streamed.

Invariants: every answer depends on the call's text so far only, never on how it was cut into
pieces; the text only grows between calls (each call's text extends the last's, starting at
the call's first character after `<tool_call>`). Each character is read a bounded number of
times over the whole call, so a long call costs no more per token than a short one (it was
sliced, stripped and searched from its start at every token: 200 KB in 4-character pieces took
seconds on the event loop). `head_end` reads a text whole the same way, once.
"""

from __future__ import annotations

import re
from collections import deque

from engines.llm.tools import CLOSE
from server.untagged import JSON_IN_STRING, ValueEnd

_SPACE = re.compile(r"\s*")
# The head, `\s*{\s*"name"\s*:\s*"<name>"\s*,\s*"arguments"\s*:\s*`, part by part (None: the
# name's characters, any but `"` and `\`, or `\` and any character but a newline, then `"`).
_HEAD = ("{", '"name"', ":", '"', None, ",", '"arguments"', ":")


class Head:
    """Whether a call's text begins with a whole head, read as the text grows: there is one
    way to read it, so a character that cannot go on reading it rules the head out for good,
    and reading goes on where the last text ended."""

    def __init__(self) -> None:
        self._part = 0
        self._at = 0
        self._name_at = 0
        self._out = False
        self.name = ""  # the text of the name's JSON string, quotes excluded, once whole

    def end(self, text: str) -> int | None:
        """Just past the head and the whitespace after it so far (None: not whole yet, or
        never)."""
        while self._part < len(_HEAD) and not self._out:
            part = _HEAD[self._part]
            if part is None:
                found = JSON_IN_STRING.search(text, self._at)
                if found is None or (found[0] == "\\" and found.end() == len(text)):
                    self._at = len(text) if found is None else found.start()
                    return None  # (an escaped character still to come: read on from its `\`)
                if found[0] == "\\":
                    self._out = text[found.end()] == "\n"
                    self._at = found.end() + 1
                    continue
                self.name, self._at = text[self._name_at : found.start()], found.end()
            else:
                at = _past_space(text, self._at)
                written = text[at : at + len(part)]
                if written != part:
                    self._out = not part.startswith(written) or at + len(part) <= len(text)
                    self._at = at
                    return None
                self._at = self._name_at = at + len(part)
            self._part += 1
        if self._out:
            return None
        self._at = _past_space(text, self._at)
        return self._at


def _past_space(text: str, at: int) -> int:
    found = _SPACE.match(text, at)
    return at if found is None else found.end()  # (it always matches)


def head_end(text: str) -> tuple[str, int] | None:
    """A whole call's head: its name's JSON string text and where its arguments begin."""
    head = Head()
    end = head.end(text)
    return None if end is None else (head.name, end)


class Arguments:
    """How much of a call's arguments object (beginning at `start` with `{`) may be streamed:
    all of it once it closes (members after it are no part); before that, all but what may
    be the call's closing brace, whitespace and the start of `</tool_call>`."""

    def __init__(self, start: int) -> None:
        self._object = ValueEnd(start)
        self._read = start
        # The last non-space characters read: enough to step back over a partial closing tag
        # (no space in it), then a `}`, to the character before them.
        self._marks: deque[int] = deque(maxlen=len(CLOSE) + 1)

    def safe(self, text: str, cut: int) -> int:
        """`cut`: where a possible start of `</tool_call>` ends the text."""
        end = self._object.end(text)
        if end is not None:
            return end
        marks: list[int] = []
        at = len(text)
        while at > self._read and len(marks) < len(CLOSE) + 1:
            at -= 1
            if not text[at].isspace():
                marks.append(at)
        self._marks.extend(reversed(marks))
        self._read = len(text)
        kept = [mark for mark in self._marks if mark < cut]  # (the object's `{` at least)
        return kept[-2 if text[kept[-1]] == "}" else -1] + 1

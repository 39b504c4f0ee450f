"""How much of a JSON object, streamed in pieces, a strict partial parser can read: the
anthropic SDK parses a `tool_use` block's `input_json_delta`s after each one with jiter's
partial mode, and raises (ending the client's stream) on the first text that cannot begin a
JSON object. A model's arguments may be such text (`True`, a trailing comma; a raw newline in a
string is escaped before it gets here, server/strict_strings.py), which
server/message_blocks.py then stops forwarding.

`JsonPrefix.feed(piece)` gives the part of `piece` to forward: all of it while the text so far
can begin a JSON object (spaces before it held: jiter reads none alone), nothing from the first
character that cannot, for good; an escape is held until whole. A `\\ud800`
escape not followed by its low half (which json.loads decodes to a lone surrogate, and jiter
refuses) is forwarded as `\\ufffd`, as `tool_input` reads it.

Invariants: the concatenation of what `feed` returned is always the beginning of a JSON object
(RFC 8259, no lone surrogate escapes, at most `MAX_JSON_DEPTH` levels); a whole object fed in
any pieces is forwarded whole (its lone surrogate escapes replaced); each character is read
once (a string's run of plain characters by one regular expression match).
"""

from __future__ import annotations

import re

from server.body import MAX_JSON_DEPTH

_SPACE = " \t\r\n"
_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')  # a string's characters that need no reading
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPED = frozenset('"\\/bfnrt')
_DIGITS = frozenset("0123456789")
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
_NUMBER_ENDS = frozenset({"zero", "int", "frac", "exp"})  # where a number may end


class JsonPrefix:
    """One `tool_use` block's input, as it streams (the module docstring)."""

    def __init__(self) -> None:
        self._stack: list[str] = []  # "{" or "[" per open container
        self._state = "start"
        self._key = False  # the open string is an object's key
        self._number = ""  # the open number's state
        self._literal = ""  # the rest of the open literal
        self._escape = ""  # an escape read so far (held back until whole)
        self._high = ""  # a high surrogate's escape, held back until its low half is read
        self._out = False  # no JSON object: nothing more is forwarded

    def feed(self, piece: str) -> str:
        forwarded: list[str] = []
        at = 0
        while at < len(piece) and not self._out:
            if self._state == "string" and not self._escape:
                found = _PLAIN.match(piece, at)
                end = found.end() if found else at
                if end > at:
                    forwarded.append(self._flush_high() + piece[at:end])
                    at = end
                    continue
            char = piece[at]
            text = self._read(char)
            if text is None:
                continue  # (a number ended: the character is read again after it)
            if self._out:
                break
            forwarded.append(text)
            at += 1
        return "".join(forwarded)

    def _read(self, char: str) -> str | None:
        """What `char` forwards (None: read it again, in the state it left)."""
        state = self._state
        if state == "string":
            return self._string(char)
        if state == "number":
            return self._read_number(char)
        if state == "literal":
            if char != self._literal[0]:
                self._out = True
                return ""
            self._literal = self._literal[1:]
            if not self._literal:
                self._state = "after"
            return char
        if char in _SPACE:
            return "" if state == "start" else char  # (jiter reads no text of spaces alone)
        if state == "start":
            return self._open(char) if char == "{" else self._fail()
        if state in ("key_or_close", "key"):
            if char == '"':
                self._state, self._key = "string", True
                return char
            if char == "}" and state == "key_or_close":
                return self._close(char)
            return self._fail()
        if state == "colon":
            if char != ":":
                return self._fail()
            self._state = "value"
            return char
        if state in ("value", "value_or_close"):
            if char == "]" and state == "value_or_close":
                return self._close(char)
            return self._value(char)
        if state == "after":
            if not self._stack:
                return self._fail()
            if char == ",":
                self._state = "key" if self._stack[-1] == "{" else "value"
                return char
            if char == {"{": "}", "[": "]"}[self._stack[-1]]:
                return self._close(char)
        return self._fail()

    def _fail(self) -> str:
        self._out = True
        return ""

    def _open(self, char: str) -> str:
        if len(self._stack) == MAX_JSON_DEPTH:  # deeper than jiter (~254) or `tool_input` read
            return self._fail()
        self._stack.append(char)
        self._state = "key_or_close" if char == "{" else "value_or_close"
        return char

    def _close(self, char: str) -> str:
        self._stack.pop()
        self._state = "after"
        return char

    def _value(self, char: str) -> str:
        if char in "{[":
            return self._open(char)
        if char == '"':
            self._state, self._key = "string", False
            return char
        if char in _LITERALS:
            self._state, self._literal = "literal", _LITERALS[char]
            return char
        if char == "-" or char in _DIGITS:
            self._state = "number"
            self._number = "minus" if char == "-" else "zero" if char == "0" else "int"
            return char
        return self._fail()

    def _read_number(self, char: str) -> str | None:
        state = self._number
        if char in _DIGITS:
            self._number = {
                "minus": "zero" if char == "0" else "int",
                "int": "int",
                "point": "frac",
                "frac": "frac",
                "e": "exp",
                "sign": "exp",
                "exp": "exp",
            }.get(state, "")
        elif char == "." and state in ("zero", "int"):
            self._number = "point"
        elif char in "eE" and state in ("zero", "int", "frac"):
            self._number = "e"
        elif char in "+-" and state == "e":
            self._number = "sign"
        elif state in _NUMBER_ENDS:
            self._state = "after"
            return None
        else:
            self._number = ""
        if not self._number:
            return self._fail()
        return char

    def _string(self, char: str) -> str:
        if not self._escape:
            if char == '"':
                self._state = "colon" if self._key else "after"
                return self._flush_high() + char
            if char != "\\":
                return self._fail()  # a control character (a plain one was matched above)
            self._escape = char
            return ""
        self._escape += char
        if len(self._escape) == 2:
            if char in _ESCAPED:
                return self._escaped()
            return "" if char == "u" else self._fail()
        if char not in _HEX:
            return self._fail()
        return self._escaped() if len(self._escape) == 6 else ""

    def _escaped(self) -> str:
        """A whole escape: forwarded, or held as a high surrogate's, or joined to one."""
        escape, self._escape = self._escape, ""
        code = int(escape[2:], 16) if escape[1] == "u" else None
        if code is not None and 0xDC00 <= code <= 0xDFFF:
            if self._high:
                high, self._high = self._high, ""
                return high + escape
            return "\\ufffd"
        pending = self._flush_high()
        if code is not None and 0xD800 <= code <= 0xDBFF:
            self._high = escape
            return pending
        return pending + escape

    def _flush_high(self) -> str:
        """A held high surrogate's escape, as what it is alone (nothing held: '')."""
        if not self._high:
            return ""
        self._high = ""
        return "\\ufffd"

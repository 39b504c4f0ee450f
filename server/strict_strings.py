"""A tool call's arguments as strict JSON where the model's only fault is raw control characters
in strings: small models write a file's content with raw newlines and tabs inside a JSON string
(`{"content": "def f():\n    return 1"}` with a real line break). Python's
`json.loads(strict=False)` reads that as meant, but strict parsers (JavaScript's `JSON.parse`
in the OpenAI and Vercel SDKs, Codex, opencode; the anthropic SDK's jiter; `json.loads`)
refuse it, so a client got arguments it could not parse (Messages: an empty or partial input).

`StrictStrings.feed(piece)` gives `piece` with each character U+0000–U+001F that stands inside a
JSON string replaced by its escape (`\\n`, `\\r`, `\\t`, `\\b`, `\\f`, else `\\u00XX`); every
other character is kept, outside strings too (whitespace there is JSON's own).

Invariants: the output depends on the text so far only, never on how it was cut into pieces
(an escape's backslash and the character it escapes may come in different pieces); text with no
raw control character in a string comes out unchanged, so valid JSON is forwarded byte for byte;
the output is strict JSON exactly where `json.loads(text, strict=False)` accepts the input, and
decodes to the same value. Each character is read once (runs of plain characters by one regular
expression search).
"""

from __future__ import annotations

import re

# Inside a string: what ends it, escapes the next character, or must be escaped.
_IN_STRING = re.compile(r'["\\\x00-\x1f]')
_SHORT = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


class StrictStrings:
    """One call's arguments, as they stream (the module docstring)."""

    def __init__(self) -> None:
        self._string = False  # inside a string
        self._escaped = False  # (inside a string) the last character was an escape's `\`

    def feed(self, piece: str) -> str:
        parts: list[str] = []
        kept = 0  # the piece is copied from here on
        at = 0
        while at < len(piece):
            if self._escaped:  # the escaped character: kept whatever it is
                self._escaped = False
                at += 1
            elif not self._string:
                at = piece.find('"', at)
                if at < 0:
                    break
                self._string, at = True, at + 1
            else:
                found = _IN_STRING.search(piece, at)
                if found is None:
                    break
                char, at = found[0], found.end()
                if char == '"':
                    self._string = False
                elif char == "\\":
                    self._escaped = True
                else:
                    parts += (piece[kept : found.start()], _escape(char))
                    kept = at
        if not parts:
            return piece
        parts.append(piece[kept:])
        return "".join(parts)


def strict_json(text: str) -> str:
    """`text` read whole by a fresh `StrictStrings`."""
    return StrictStrings().feed(text)


def _escape(char: str) -> str:
    return _SHORT.get(char) or f"\\u{ord(char):04x}"

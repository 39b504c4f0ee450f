"""Splitting the input into the pieces the engine speaks one at a time.

Invariants: the pieces, in order, hold every non-space character of the input; each ends at a
sentence end (., !, ?, …, or a line break) where there is one within `MAX_PIECE_CHARS`, else at
a clause mark (, ; :) or a space, so no piece exceeds `MAX_PIECE_CHARS` unless a single word does.
Kokoro reads at most 510 phonemes at once; 300 characters of English stay well below that.
"""

from __future__ import annotations

import re

MAX_PIECE_CHARS = 300
MAX_INPUT_CHARS = 4096  # OpenAI's limit for /v1/audio/speech

_SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"')\]]))\s+|\n+")
_CLAUSE_END = re.compile(r"(?<=[,;:—])\s+")


def split_pieces(text: str, max_chars: int = MAX_PIECE_CHARS) -> list[str]:
    """The input as pieces to speak in order (empty for blank input)."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        pieces.extend(_bounded(sentence.strip(), max_chars))
    return [piece for piece in pieces if piece]


def _bounded(sentence: str, max_chars: int) -> list[str]:
    """A sentence longer than `max_chars` cut at clause marks, then at spaces."""
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    current = ""
    for part in _CLAUSE_END.split(sentence):
        for word in part.split(" ") if len(part) > max_chars else [part]:
            joined = f"{current} {word}".strip()
            if current and len(joined) > max_chars:
                pieces.append(current)
                joined = word
            current = joined
    pieces.append(current)
    return pieces

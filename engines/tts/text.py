"""Splitting the input into the pieces the engine speaks one at a time.

Invariants: the pieces, in order, hold every non-space character of the input; each ends at a
sentence end (., !, ?, …, or a line break) where there is one within `MAX_PIECE_CHARS`, else at
a clause mark (, ; :) or a space, so no piece exceeds `MAX_PIECE_CHARS` unless a single word does.
Kokoro reads at most 510 phonemes at once; 300 characters of English stay below that, but not
every piece does (numbers read long: 297 characters of them are over 1,000 phonemes), so
`readings` cuts a piece that reads over the model's limit again, by its phonemes: every part is
read, none is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_PIECE_CHARS = 300
MAX_INPUT_CHARS = 4096  # OpenAI's limit for /v1/audio/speech

_SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"')\]]))\s+|\n+")
_CLAUSE_END = re.compile(r"(?<=[,;:—])\s+")
_SPACE = re.compile(r"\s+")


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


def readings(piece: str, read: Callable[[str], str], limit: int) -> list[tuple[str, str]]:
    """`piece` as (text, phonemes) pairs that `read` (text → phonemes) makes at most `limit`
    phonemes each, in order, together holding every non-space character of `piece`.

    A piece that reads over the limit is cut as mlx-audio's KPipeline cuts its tokens: at
    sentence ends, else at clause marks, else at spaces — each part as long as still reads
    within the limit — and a single word that reads over it in halves (no phoneme is dropped).
    Parts are read anew, so each pair's phonemes are exactly what its text reads (not a slice
    of the whole's: espeak-ng stops a long clause short, 27 ten-digit numbers read as 14)."""
    phonemes = read(piece)
    if len(phonemes) <= limit:
        return [(piece, phonemes)]
    for boundary in (_SENTENCE_END, _CLAUSE_END, _SPACE):
        parts = [part for part in boundary.split(piece.strip()) if part.strip()]
        if len(parts) > 1:
            groups = [parts[0]]
            for part in parts[1:]:
                joined = f"{groups[-1]} {part}"
                if len(read(joined)) <= limit:
                    groups[-1] = joined
                else:
                    groups.append(part)
            return [pair for group in groups for pair in readings(group, read, limit)]
    if len(piece) == 1:  # cannot be halved; no character reads anywhere near the limit
        return [(piece, phonemes[:limit])]
    middle = len(piece) // 2
    return readings(piece[:middle], read, limit) + readings(piece[middle:], read, limit)

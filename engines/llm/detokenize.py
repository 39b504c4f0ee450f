"""Incremental detokenization and stop strings, on the engine thread.

Invariants:
- `IncrementalDetokenizer.add` returns only whole characters: bytes of a UTF-8 character split
  across tokens are held until the character is complete.
- `StopMatcher` never lets a stop string, or any prefix of one that might still complete, reach the
  client; text is held back only while it could still become a stop string.
"""

from __future__ import annotations

from typing import Any

from engines.byte_level import gpt2_byte_decoder

# Tokens decoded again before the new ones, so that merges across token boundaries (leading
# spaces, multi-byte characters) decode as they would in the whole text.
_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    """Decodes a growing token list into text deltas, via the tokenizer's own `decode`."""

    def __init__(
        self,
        tokenizer: Any,
        skip_special_tokens: bool = True,
        hidden: frozenset[int] | None = None,
    ) -> None:
        """`hidden`: when set, exactly these tokens are left out (the special tokens, less the
        markers the edge parses: engines/llm/chat_formats.py); else the tokenizer's own
        `skip_special_tokens` decides."""
        self._tokenizer = tokenizer
        self._decode_ids = rust_decode(tokenizer) or tokenizer.decode
        self._skip_special_tokens = skip_special_tokens and hidden is None
        self._hidden = hidden
        self._tokens: list[int] = []
        self._prefix_offset = 0  # start of the context window given to decode
        self._read_offset = 0  # tokens before this have been returned as text

    def _decode(self, tokens: list[int]) -> str:
        if self._hidden is not None:
            tokens = [t for t in tokens if t not in self._hidden]
        return str(self._decode_ids(tokens, skip_special_tokens=self._skip_special_tokens))

    def add(self, token: int) -> str:
        self._tokens.append(token)
        prefix_text = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._tokens[self._prefix_offset :])
        if full_text.endswith("\ufffd") or len(full_text) <= len(prefix_text):
            return ""  # an incomplete character (or nothing visible yet): wait for more tokens
        delta = full_text[len(prefix_text) :]
        self._read_offset = len(self._tokens)
        self._prefix_offset = max(0, self._read_offset - _CONTEXT_TOKENS)
        return delta

    def flush(self) -> str:
        """Whatever is still held at the end (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._tokens[self._prefix_offset :])
        self._read_offset = len(self._tokens)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""


def rust_decode(tokenizer: Any) -> Any:
    """The Rust tokenizer's own `decode` where transformers' returns the same text: a
    `TokenizersBackend` whose `_decode` is its own (the Rust call, then an optional clean-up of
    spaces) and that cleans up no spaces; else None. transformers' wrapper (`to_py_obj` over
    the ids, keyword handling) is ~3 µs of each ~4 µs call, and `add` decodes twice per token."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    if not isinstance(hf, TokenizersBackend) or type(hf)._decode is not TokenizersBackend._decode:
        return None
    backend = hf._tokenizer
    if hf.clean_up_tokenization_spaces or backend is None:
        return None
    return backend.decode


class StopMatcher:
    """Finds stop strings in streamed text, holding back possible partial matches."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self.matched: str | None = None  # the stop string found, once one was

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop string was found)."""
        if not self._stops:
            return text, False
        buffer = self._held + text
        found = [(i, stop) for stop in self._stops if (i := buffer.find(stop)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda hit: hit[0])
            self._held = ""
            return buffer[:cut], True
        keep = self._longest_partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_partial_suffix(self, buffer: str) -> int:
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if stop.startswith(buffer[len(buffer) - length :]):
                    best = length
                    break
        return best


class TokenBytes:
    """The raw bytes of single tokens (for logprobs' `bytes`), cached per token id."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, bytes] = {}
        self._decoder = gpt2_byte_decoder()
        self._byte_level = _looks_byte_level(tokenizer)

    def __call__(self, token: int) -> bytes:
        cached = self._cache.get(token)
        if cached is None:
            cached = self._compute(token)
            self._cache[token] = cached
        return cached

    def _compute(self, token: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens([token])[0]
        if self._byte_level and piece is not None and all(c in self._decoder for c in piece):
            return bytes(self._decoder[c] for c in piece)
        return str(self._tokenizer.decode([token])).encode("utf-8")


def _looks_byte_level(tokenizer: Any) -> bool:
    """Byte-level BPE vocabularies spell a space as 'Ġ' (U+0120)."""
    ids = tokenizer.encode(" a", add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return any(piece and piece.startswith("Ġ") for piece in pieces)

"""Constrained decoding: grammars (JSON schemas; forced tool calls, built in
engines/llm/call_grammars.py) → a token mask per step.

Built on llguidance: a grammar is compiled once per request against the model's tokenizer, and
each constrained sequence carries its own matcher. Each step, the matcher's bitmask of allowed
tokens becomes an additive −inf mask on that row's logits (numpy bitmask → MLX: works on every
device; llguidance's own MLX kernel is Metal-only).

Invariants:
- `GrammarCompiler.check` runs on any thread (no MLX) and raises InvalidRequest naming the param
  for a grammar the library cannot compile (an unsupported schema feature, say) or one no output
  satisfies (a schema that only refers to itself: nothing but the end of the sequence is
  allowed at the start, and the empty output is not accepted); a grammar that passed `check`
  never fails later for those reasons.
- A `Constraint` is used by one sequence on the engine thread; forking copies the matcher.
- Once the grammar is complete, only end-of-sequence tokens are allowed: the sequence stops.
- Numbers are bounded: outside JSON strings no run of digits grows past `MAX_DIGITS` (integer
  part, fraction and exponent each), so a small greedy model cannot loop on digits until
  max_tokens (llama.cpp bounds its schema grammars the same way). The bound narrows the
  grammar's own mask and never widens it; where it would leave nothing (a schema whose own
  `minimum` needs more digits), the grammar's mask stands alone.
- Tool-call tags that are single tokens of the vocabulary (Qwen's `<tool_call>`) are named in the
  grammar as those tokens: a grammar that spells them as text cannot accept the token the model
  was trained to emit.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import numpy as np

from engines.errors import InvalidRequest

MAX_DIGITS = 16
_DIGITS = b"0123456789"

# Fixed separators, no free whitespace: small models otherwise loop on whitespace (the schema
# allows any amount) until max_tokens, and compact JSON costs fewer tokens.
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def compact(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "x-guidance": {**_COMPACT, **schema.get("x-guidance", {})}}


def lenient(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with the keywords llguidance does not implement (`uniqueItems`, which pydantic
    writes for a set; `contains`, `not`, `if`…) left unenforced rather than refused: for a
    schema that is not `strict`, which OpenAI's API does not hold the output to at all."""
    return {**schema, "x-guidance": {**(schema.get("x-guidance") or {}), "lenient": True}}


# Numbers written in text formats whose parsers read them with float() or Python's parser: no
# exponent (1e999 would read as inf), runs of digits bounded as MAX_DIGITS bounds JSON's.
PLAIN_KEYS = {"type", "description", "title"}  # a schema with only these: a plain number
_PLAIN_DIGITS = "(0|[1-9][0-9]{0,15})"
PLAIN_NUMBERS = {
    "integer": f"/-?{_PLAIN_DIGITS}/",
    "number": f"/-?{_PLAIN_DIGITS}(\\.[0-9]{{1,16}})?/",
}


def regex_text(text: str) -> str:
    """`text` as literal content of a Lark regex."""
    return "".join("\\n" if c == "\n" else f"\\{c}" if c in "/\\.^$*+?()[]{}|" else c for c in text)


_GRAMMAR_POSITION = re.compile(r"^at \d+\(\d+\): ")


def json_schema_grammar(schema: dict[str, Any]) -> str:
    import llguidance

    # As JSON text: the library cannot take a Python int past 64 bits (`"minimum": 1e20`
    # written as an integer), which it parses from text.
    return str(llguidance.LLMatcher.grammar_from_json_schema(json.dumps(compact(schema))))


def lark_grammar(lark: str) -> str:
    import llguidance

    return str(llguidance.LLMatcher.grammar_from_lark(lark))


class GrammarCompiler:
    """The model's tokenizer as llguidance sees it (built once per engine: a pass over the whole
    vocabulary)."""

    def __init__(self, hf_tokenizer: Any, n_vocab: int, eos_token_ids: list[int]) -> None:
        import llguidance.hf

        self.n_vocab = n_vocab
        self._eos = frozenset(eos_token_ids)
        self._tokenizer = llguidance.hf.from_tokenizer(
            hf_tokenizer, n_vocab=n_vocab, eos_token=eos_token_ids
        )
        self._digits = DigitTable(
            [self._tokenizer.decode_bytes([token]) for token in range(n_vocab)]
        )

    def check(self, grammar: str, param: str) -> None:
        import llguidance

        try:
            error = llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
        except (ValueError, RuntimeError) as exc:
            error = str(exc)
        if error:
            # The library's first line says why; the rest, and a position like "at 3(7): ", is
            # about the grammar mlxd built around the schema, which the client never wrote.
            reason = _GRAMMAR_POSITION.sub("", (error.strip().splitlines() or [error])[0])
            raise InvalidRequest(f"{param} cannot be enforced: {reason}", param=param)
        start = self.constraint(grammar)
        if not start.accepting() and set(np.flatnonzero(start.allowed())) <= self._eos:
            raise InvalidRequest(
                f"{param} cannot be enforced: no output satisfies it (does it only refer to "
                "itself?)",
                param=param,
            )

    def constraint(self, grammar: str) -> Constraint:
        import llguidance

        matcher = llguidance.LLMatcher(self._tokenizer, grammar)
        if matcher.is_error():
            raise InvalidRequest(f"grammar error: {matcher.get_error()}", param="response_format")
        return Constraint(matcher, self.n_vocab, DigitBudget(self._digits))


class DigitTable:
    """Per token of the vocabulary: its bytes, its leading digits and its longest run of digits
    after a non-digit (vectors, so a step's mask costs two comparisons)."""

    def __init__(self, token_bytes: list[bytes]) -> None:
        self.token_bytes = token_bytes
        self.leading = np.array([len(b) - len(b.lstrip(_DIGITS)) for b in token_bytes])
        self.inner_ok = np.array(
            [_longest_run(b.lstrip(_DIGITS)) <= MAX_DIGITS for b in token_bytes]
        )
        self.longest_leading = int(self.leading.max(initial=0))


def _longest_run(data: bytes) -> int:
    longest = run = 0
    for byte in data:
        run = run + 1 if byte in _DIGITS else 0
        longest = max(longest, run)
    return longest


class DigitBudget:
    """Where the output stands for `MAX_DIGITS`: inside a JSON string or not, and the run of
    digits it ends with (outside strings: a number's integer part, fraction or exponent)."""

    def __init__(self, table: DigitTable) -> None:
        self._table = table
        self._in_string = self._escaped = False
        self._run = 0

    def narrow(self, allowed: np.ndarray) -> np.ndarray:
        """`allowed` less the tokens that would make a run of digits too long (unless that
        leaves nothing: then the grammar needs the digits, and has them)."""
        if self._in_string:
            return allowed
        table = self._table
        narrowed = allowed & table.inner_ok
        if self._run + table.longest_leading > MAX_DIGITS:
            narrowed &= table.leading[: len(allowed)] + self._run <= MAX_DIGITS
        return narrowed if narrowed.any() else allowed

    def consume(self, token: int) -> None:
        if token >= len(self._table.token_bytes):
            return
        for byte in self._table.token_bytes[token]:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif byte == 0x5C:  # backslash
                    self._escaped = True
                elif byte == 0x22:  # closing quote
                    self._in_string = False
            elif byte == 0x22:
                self._in_string, self._run = True, 0
            else:
                self._run = self._run + 1 if byte in _DIGITS else 0


class Constraint:
    """One sequence's grammar state: the allowed next tokens, advanced token by token."""

    def __init__(self, matcher: Any, n_vocab: int, digits: DigitBudget) -> None:
        import llguidance.numpy

        self._matcher = matcher
        self._n_vocab = n_vocab
        self._digits = digits
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, n_vocab)

    def accepting(self) -> bool:
        """The output so far is complete as it stands."""
        return bool(self._matcher.is_accepting())

    def allowed(self) -> np.ndarray:
        """Boolean (n_vocab,): the tokens the grammar allows next (numbers bounded)."""
        import llguidance.numpy

        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")
        return self._digits.narrow(bits[: self._n_vocab].astype(bool))

    def consume(self, token: int) -> None:
        self._matcher.consume_token(token)
        self._digits.consume(token)

    def fork(self) -> Constraint:
        twin = Constraint.__new__(Constraint)
        twin.__dict__.update(self.__dict__)
        twin._matcher = self._matcher.deep_copy()
        twin._bitmask = self._bitmask.copy()
        twin._digits = copy.copy(self._digits)
        return twin

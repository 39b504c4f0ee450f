"""Constrained decoding: grammars (JSON schemas, tool-call formats) → a token mask per step.

Built on llguidance: a grammar is compiled once per request against the model's tokenizer, and
each constrained sequence carries its own matcher. Each step, the matcher's bitmask of allowed
tokens becomes an additive −inf mask on that row's logits (numpy bitmask → MLX: works on every
device; llguidance's own MLX kernel is Metal-only).

Invariants:
- `GrammarCompiler.check` runs on any thread (no MLX) and raises InvalidRequest naming the param
  for a grammar the library cannot compile (an unsupported schema feature, say); a grammar that
  passed `check` never fails later for that reason.
- A `Constraint` is used by one sequence on the engine thread; forking copies the matcher.
- Once the grammar is complete, only end-of-sequence tokens are allowed: the sequence stops.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from engines.errors import InvalidRequest

# Fixed separators, no free whitespace: small models otherwise loop on whitespace (the schema
# allows any amount) until max_tokens, and compact JSON costs fewer tokens.
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _compact(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "x-guidance": {**_COMPACT, **schema.get("x-guidance", {})}}


def json_schema_grammar(schema: dict[str, Any]) -> str:
    import llguidance

    return str(llguidance.LLMatcher.grammar_from_json_schema(_compact(schema)))


def lark_grammar(lark: str) -> str:
    import llguidance

    return str(llguidance.LLMatcher.grammar_from_lark(lark))


def tool_call_grammar(tools: list[dict[str, Any]], forced: str | None, parallel: bool) -> str:
    """Hermes-style calls, `<tool_call>{"name": …, "arguments": {…}}</tool_call>` — one (or,
    with `parallel`, one or more) of `tools`, or only the function named `forced`."""
    options = []
    for tool in tools:
        function = tool["function"]
        if forced is not None and function["name"] != forced:
            continue
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": function["name"]},
                    "arguments": function.get("parameters") or {"type": "object"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    repeat = "+" if parallel else ""
    return lark_grammar(
        f'start: call{repeat}\ncall: "<tool_call>\\n" body "\\n</tool_call>"\n'
        f"body: %json {json.dumps(_compact(schema))}\n"
    )


class GrammarCompiler:
    """The model's tokenizer as llguidance sees it (built once per engine: ~0.5 s)."""

    def __init__(self, hf_tokenizer: Any, n_vocab: int, eos_token_ids: list[int]) -> None:
        import llguidance.hf

        self.n_vocab = n_vocab
        self._tokenizer = llguidance.hf.from_tokenizer(
            hf_tokenizer, n_vocab=n_vocab, eos_token=eos_token_ids
        )

    def check(self, grammar: str, param: str) -> None:
        import llguidance

        try:
            error = llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
        except (ValueError, RuntimeError) as exc:
            error = str(exc)
        if error:
            raise InvalidRequest(f"{param} cannot be enforced: {error}", param=param)

    def constraint(self, grammar: str) -> Constraint:
        import llguidance

        matcher = llguidance.LLMatcher(self._tokenizer, grammar)
        if matcher.is_error():
            raise InvalidRequest(f"grammar error: {matcher.get_error()}", param="response_format")
        return Constraint(matcher, self.n_vocab)


class Constraint:
    """One sequence's grammar state: the allowed next tokens, advanced token by token."""

    def __init__(self, matcher: Any, n_vocab: int) -> None:
        import llguidance.numpy

        self._matcher = matcher
        self._n_vocab = n_vocab
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, n_vocab)

    def allowed(self) -> np.ndarray:
        """Boolean (n_vocab,): the tokens the grammar allows next."""
        import llguidance.numpy

        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")
        return bits[: self._n_vocab].astype(bool)

    def consume(self, token: int) -> None:
        self._matcher.consume_token(token)

    def fork(self) -> Constraint:
        twin = Constraint.__new__(Constraint)
        twin.__dict__.update(self.__dict__)
        twin._matcher = self._matcher.deep_copy()
        twin._bitmask = self._bitmask.copy()
        return twin

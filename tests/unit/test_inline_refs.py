"""engines/llm/call_grammars.py `inline_refs`: a tool's definitions inlined where used, up to a
bound, past which they are referred to from the schema's root (as recursive ones are)."""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import llguidance
import pytest

from engines.llm.call_grammars import INLINED_NODES, inline_refs, tool_call_grammar
from engines.llm.constrain import json_schema_grammar


def doubling(levels: int) -> dict[str, Any]:
    """Definitions that each use the next twice: inlined whole, 2**levels leaves."""
    definitions: dict[str, Any] = {
        f"D{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/D{i + 1}"}, "b": {"$ref": f"#/$defs/D{i + 1}"}},
            "required": ["a", "b"],
        }
        for i in range(levels)
    }
    definitions[f"D{levels}"] = {"type": "string"}
    return {"type": "object", "properties": {"x": {"$ref": "#/$defs/D0"}}, "$defs": definitions}


def tree(levels: int, leaf: Any) -> Any:
    return leaf if levels == 0 else {"a": tree(levels - 1, leaf), "b": tree(levels - 1, leaf)}


def test_a_schema_that_doubles_at_each_definition_is_not_written_out() -> None:
    """A 2 KB schema (20 levels) inlined whole was 69 MB, written in 13 s on the event loop (each
    more level doubles both): the inlined schema stays within the bound, and means the same."""
    schema = doubling(16)
    started = time.perf_counter()
    inlined = inline_refs(schema)
    assert time.perf_counter() - started < 1
    assert len(json.dumps(inlined)) < 50 * INLINED_NODES
    schema = doubling(14)  # past the bound too, and its instances quicker to check
    inlined = inline_refs(schema)
    assert inlined.get("$defs"), "definitions referred to, not inlined"
    for levels, leaf, valid in [(14, "s", True), (14, 7, False), (13, "s", False)]:
        instance = {"x": tree(levels, leaf)}
        assert jsonschema.Draft202012Validator(inlined).is_valid(instance) is valid
        assert jsonschema.Draft202012Validator(schema).is_valid(instance) is valid


@pytest.mark.parametrize("tool_format", ["json_tools", "qwen3_coder"])
def test_its_grammar_compiles(tool_format: str) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": doubling(16)}}]
    for grammar in (
        json_schema_grammar(inline_refs(doubling(16))),
        tool_call_grammar(tools, "f", parallel=False, tool_format=tool_format),
    ):
        assert len(grammar) < 50 * INLINED_NODES
        assert llguidance.LLMatcher.validate_grammar(grammar, None) == ""

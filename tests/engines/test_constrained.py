"""Constrained decoding on the tiny random model's engine: schema-valid JSON from a model that
knows nothing of JSON, for 20 seeds, while unconstrained sequences share the batch; forced tool
calls; n > 1 with a grammar."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from engines.errors import InvalidRequest
from engines.llm.call_grammars import tool_call_grammar
from engines.llm.constrain import json_schema_grammar
from engines.llm.engine import LLMEngine
from engines.types import GenerationRequest, SamplingParams, TokenEvent
from server.chat_pipeline import checked_grammar
from server.schemas.anthropic import MessagesRequest
from server.schemas.chat import ChatCompletionRequest
from server.tool_calls import ToolCallParser
from tests.helpers import PROMPT, prompt, run

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "ok"],
    "additionalProperties": False,
}


def valid(document: dict[str, object]) -> bool:
    return (
        set(document) == {"name", "age", "tags", "ok"}
        and isinstance(document["name"], str)
        and len(document["name"]) <= 12
        and isinstance(document["age"], int)
        and 0 <= document["age"] <= 150
        and isinstance(document["tags"], list)
        and all(tag in ("a", "b", "c") for tag in document["tags"])
        and isinstance(document["ok"], bool)
    )


async def test_json_schema_for_20_seeds_inside_a_mixed_batch(engine: LLMEngine) -> None:
    grammar = json_schema_grammar(SCHEMA)
    engine.check_grammar(grammar, "response_format")
    constrained = [
        GenerationRequest(
            f"j{seed}", PROMPT, 200, SamplingParams(temperature=1.0, seed=seed), grammar=grammar
        )
        for seed in range(20)
    ]
    free = [
        GenerationRequest(f"f{i}", prompt(i), 30, SamplingParams(temperature=1.0, seed=i))
        for i in range(6)
    ]
    engine.largest_batch = 0
    results = await asyncio.gather(*(run(engine, r) for r in [*constrained, *free]))
    assert engine.largest_batch >= 8, engine.largest_batch
    for text, _, finish in results[:20]:
        assert finish.reason == "stop", text  # the grammar ended it, not max_tokens
        assert valid(json.loads(text)), text
    for request, (_, tokens, finish) in zip(free, results[20:], strict=True):
        assert len(tokens) == request.max_tokens and finish.reason == "length"
    assert engine.active == 0


async def test_n_choices_each_follow_the_grammar(engine: LLMEngine) -> None:
    grammar = json_schema_grammar(SCHEMA)
    request = GenerationRequest(
        "n", PROMPT, 200, SamplingParams(temperature=1.0, seed=3), n=3, grammar=grammar
    )
    events = [event async for event in engine.submit(request)]
    texts: dict[int, str] = {}
    for event in events:
        if hasattr(event, "text"):
            texts[event.index] = texts.get(event.index, "") + event.text
    assert len(texts) == 3
    assert all(valid(json.loads(text)) for text in texts.values())


async def test_forced_tool_call_parses(engine: LLMEngine) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {
                    "type": "object",
                    "properties": {"q": {"type": "string", "maxLength": 8}},
                    "required": ["q"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    grammar = tool_call_grammar(tools, "lookup", parallel=False)
    text, _, finish = await run(
        engine, GenerationRequest("t", PROMPT, 200, SamplingParams(0.0), grammar=grammar)
    )
    parser = ToolCallParser()
    assert parser.feed(text).content + parser.finish().content == ""
    assert finish.reason == "stop"
    [call] = parser.calls
    assert call.name == "lookup" and set(json.loads(call.arguments)) == {"q"}


def test_unsupported_schema_is_refused_with_the_reason(engine: LLMEngine) -> None:
    with pytest.raises(InvalidRequest) as caught:
        engine.check_grammar(json_schema_grammar({"type": "wat"}), "response_format")
    assert caught.value.param == "response_format"


# A pydantic set: `uniqueItems`, which the grammar library does not implement.
A_SET = {
    "type": "object",
    "properties": {
        "ids": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "maxItems": 4}
    },
    "required": ["ids"],
    "additionalProperties": False,
}


async def test_a_schema_that_is_not_strict_is_held_to_what_the_library_implements(
    engine: LLMEngine,
) -> None:
    """A `response_format` schema that is not strict (Instructor's JSON_SCHEMA mode with a set
    field) is enforced but for the keywords the grammar library does not implement, as OpenAI's
    API takes it; a strict one, and Anthropic's structured output and strict tools (always held
    to their schema), are refused as before ('Unimplemented keys')."""

    def chat(strict: bool | None) -> ChatCompletionRequest:
        json_schema = {"name": "ids", "schema": A_SET, "strict": strict}
        return ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}],
             "response_format": {"type": "json_schema", "json_schema": json_schema}}
        )  # fmt: skip

    for strict in (None, False):
        grammar = await checked_grammar(chat(strict), [], engine)
        assert grammar is not None
        for seed in range(3):
            sampling = SamplingParams(temperature=1.0, seed=seed)
            text, _, finish = await run(
                engine, GenerationRequest(f"s{seed}", PROMPT, 200, sampling, grammar=grammar)
            )
            ids = json.loads(text)["ids"]  # the rest of the schema holds
            assert finish.reason == "stop" and len(ids) <= 4, text
            assert all(isinstance(i, int) for i in ids), text
    with pytest.raises(InvalidRequest, match="uniqueItems"):
        await checked_grammar(chat(True), [], engine)
    hi = [{"role": "user", "content": "hi"}]
    for anthropic in (
        {"output_config": {"format": {"type": "json_schema", "schema": A_SET}}},
        {"tools": [{"name": "f", "input_schema": A_SET, "strict": True}],
         "tool_choice": {"type": "any"}},
    ):  # fmt: skip
        request = {"model": "m", "max_tokens": 9, "messages": hi, **anthropic}
        body = MessagesRequest.model_validate(request).chat_body()
        chat_request = ChatCompletionRequest.model_validate(body)
        with pytest.raises(InvalidRequest, match="uniqueItems"):
            await checked_grammar(chat_request, body.get("tools", []), engine)


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
        {"$ref": "#/$defs/a", "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}]}}},
    ],
)
def test_a_schema_no_output_satisfies_is_refused(
    engine: LLMEngine, schema: dict[str, object]
) -> None:
    """Not a 200 with empty content (the grammar allowed nothing but the end at the start)."""
    with pytest.raises(InvalidRequest, match="no output satisfies it") as caught:
        engine.check_grammar(json_schema_grammar(schema), "response_format")
    assert caught.value.param == "response_format"
    engine.check_grammar(json_schema_grammar({"type": "string"}), "response_format")


def _digits_allowed(engine: LLMEngine, schema: dict[str, object], text: str) -> bool:
    """After the output `text`, whether the grammar (with its digit bound) allows a digit."""
    constraint = engine.grammar_compiler().constraint(json_schema_grammar(schema))
    for token in engine.tokenizer.encode(text, add_special_tokens=False):
        assert constraint.allowed()[token], text
        constraint.consume(token)
    digit_tokens = [engine.tokenizer.encode(d, add_special_tokens=False)[0] for d in "0123456789"]
    return bool(constraint.allowed()[digit_tokens].any())


def test_number_digits_are_bounded(engine: LLMEngine) -> None:
    number = {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}
    sixteen = "1234567890123456"
    assert _digits_allowed(engine, number, '{"n": ' + sixteen[:-1])
    assert not _digits_allowed(engine, number, '{"n": ' + sixteen)
    assert _digits_allowed(engine, number, '{"n": ' + sixteen + ".")
    assert not _digits_allowed(engine, number, '{"n": -' + sixteen + "." + sixteen)
    assert not _digits_allowed(engine, number, '{"n": 1.5e' + sixteen)
    text = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
    assert _digits_allowed(engine, text, '{"s": "' + sixteen * 2)  # strings are not numbers


def test_a_schemas_own_minimum_outranks_the_digit_bound(engine: LLMEngine) -> None:
    big = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 10**17}},
        "required": ["n"],
    }
    assert _digits_allowed(engine, big, '{"n": ' + "1" * 16)


def test_pythonic_calls_of_names_python_cannot_read_are_forced_in_the_default_format() -> None:
    """`f(a-b=1)` or `f(class=1)` is no Python call the pythonic parser could read back: such
    tools are forced (and then parsed) in json_tools' form; well-named ones stay pythonic."""
    from engines.llm.call_grammars import grammar_format, grammar_tags
    from engines.llm.chat_formats import DEFAULT_FORMAT

    def tool(name: str, *params: str) -> dict[str, object]:
        properties = {p: {"type": "integer"} for p in params}
        return {"function": {"name": name, "parameters": {"properties": properties}}}

    assert grammar_format("pythonic", [tool("get_weather", "city", "days")]) == "pythonic"
    assert "<|tool_call_start|>" in grammar_tags("pythonic", [tool("f", "a")])
    for bad in ([tool("f", "a-b")], [tool("f", "class")], [tool("get-weather")]):
        assert grammar_format("pythonic", bad) == DEFAULT_FORMAT
        assert grammar_tags("pythonic", bad) == grammar_tags(DEFAULT_FORMAT)
        grammar = tool_call_grammar(bad, None, parallel=False, tool_format="pythonic")
        assert grammar == tool_call_grammar(bad, None, parallel=False)


async def test_logprobs_under_a_grammar_are_finite(engine: LLMEngine) -> None:
    """Where the grammar allows fewer tokens than `top_logprobs` asks for, the ruled-out ones
    (log-probability -inf, which JSON cannot carry: a 500 at the edge) are left out."""
    request = GenerationRequest(
        "t", PROMPT, 24, SamplingParams(0.0), grammar=json_schema_grammar(SCHEMA), logprobs=5
    )
    entries = []
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent):
            entries += event.logprobs
    assert entries
    assert any(len(entry.top) < 5 for entry in entries)  # the grammar left fewer than five
    for entry in entries:
        assert entry.logprob is not None and math.isfinite(entry.logprob)
        assert all(math.isfinite(logprob) for _, _, logprob in entry.top)
    json.dumps([entry.logprob for entry in entries], allow_nan=False)

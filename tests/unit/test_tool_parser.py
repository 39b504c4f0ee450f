"""The streaming tool-call parser on recorded outputs, fed in arbitrary chunkings."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from server.tool_calls import ToolCallParser
from tests.helpers import late_over_early_cost

HERMES = (
    "Let me check.<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
    "</tool_call>\n<tool_call>\n"
    '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>'
)


def run(text: str, seed: int) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(content, [(name, concatenated argument fragments)], ids) from random chunks."""
    rng = random.Random(seed)
    parser = ToolCallParser()
    content = ""
    calls: dict[int, dict[str, str]] = {}
    position = 0
    deltas = []
    while position < len(text):
        size = rng.randint(1, 9)
        deltas.append(parser.feed(text[position : position + size]))
        position += size
    deltas.append(parser.finish())
    for delta in deltas:
        content += delta.content
        for call in delta.calls:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            if call.id is not None:
                assert not entry["id"], "a call's id and name are sent once"
                entry["id"], entry["name"] = call.id, call.name or ""
            entry["arguments"] += call.arguments
    assert [c.arguments for c in parser.calls] == [e["arguments"] for e in calls.values()]
    return (
        content,
        [(e["name"], e["arguments"]) for e in calls.values()],
        [e["id"] for e in calls.values()],
    )


@pytest.mark.parametrize("seed", range(40))
def test_hermes_calls_in_any_chunking(seed: int) -> None:
    content, calls, ids = run(HERMES, seed)
    assert content == "Let me check."  # the newline between the calls is no content
    assert calls == [
        ("get_weather", '{"city": "Paris", "unit": "celsius"}'),
        ("get_time", '{"tz": "Europe/Paris"}'),
    ]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(
    "after",
    [', "id": "call_1"', ', "name": "search"', ', "extra": {"a": "}"}', ', "arguments": {"x": 1}'],
    ids=["id", "duplicate name", "object", "duplicate arguments"],
)
def test_members_after_the_arguments_are_no_part_of_them(after: str, seed: int) -> None:
    """Streamed, the argument fragments stop where the model's arguments object closes: they
    ran on to the call's last brace (a client's concatenation was no JSON), while the call
    held the arguments alone. The first "name" names the call (the one streamed), and the first
    "arguments" are its arguments (the ones streamed; whole, the call held the last)."""
    arguments = '{"city":"Paris", "note": "a } b"}'
    text = f'<tool_call>\n{{"name": "get_weather", "arguments": {arguments}{after}}}\n</tool_call>'
    content, calls, _ = run(text, seed)
    assert (content, calls) == ("", [("get_weather", arguments)])
    whole = ToolCallParser()
    whole.feed(text)
    whole.finish()
    assert [(c.name, c.arguments) for c in whole.calls] == calls


NEVER_PARSES = {
    "arguments no object": ("[1, 2]", "[1, 2]"),
    "arguments null": ("null", "null"),
    "no JSON in the object": ('{"city": tru}', '{"city": tru}'),
    "members after the object": ('{"city": "Paris"}, oops', '{"city": "Paris"}'),
    "object never closed": ('{"city": ["Paris"', '{"city": ["Paris"'),
    "deeper than a body may be": ("[" * 200 + "]" * 200, "[" * 200 + "]" * 200),
}


@pytest.mark.parametrize("arguments, sent", NEVER_PARSES.values(), ids=NEVER_PARSES.keys())
def test_a_call_whose_head_is_whole_is_a_call_whatever_follows(arguments: str, sent: str) -> None:
    """Once `{"name": "…", "arguments":` is whole the name is streamed, and a client cannot
    be told to forget a call: the output is that call however it is cut, whole included (whole,
    it was text, streamed a call), its arguments what the model wrote (the object where it
    closes, else up to the call's closing brace), whether or not they parse."""
    text = f'Sure.<tool_call>\n{{"name": "get_weather", "arguments": {arguments}}}\n</tool_call>'
    expected = ("Sure.", [("get_weather", sent)])
    whole = ToolCallParser()
    content = whole.feed(text).content + whole.finish().content
    assert (content, [(c.name, c.arguments) for c in whole.calls]) == expected
    for seed in range(10):
        assert run(text, seed)[:2] == expected
    pieces = ToolCallParser()
    sent_pieces = [pieces.feed(char) for char in text] + [pieces.finish()]
    assert "".join(d.content for d in sent_pieces) == "Sure."
    assert [(c.name, c.arguments) for c in pieces.calls] == expected[1]


@pytest.mark.parametrize("seed", range(10))
def test_other_key_order_and_string_arguments(seed: int) -> None:
    text = '<tool_call>{"arguments": "{\\"x\\": 1}", "name": "f"}</tool_call>'
    assert run(text, seed)[1] == [("f", '{"x": 1}')]


@pytest.mark.parametrize("seed", range(20))
def test_string_arguments_after_the_name_are_sent_decoded(seed: int) -> None:
    """Arguments a model wrote as a JSON string are held back to the call's close: streamed as
    written, they concatenated to the string ('"{\\"x\\": 1}"'), not the object the call holds
    (and the Anthropic SDK's stream helper raised on the input_json_delta)."""
    text = '<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>'
    assert run(text, seed)[1] == [("f", '{"x": 1}')]


@pytest.mark.parametrize("seed", range(10))
def test_text_that_only_looks_like_markup_is_content(seed: int) -> None:
    text = "a < b, <tool and <tool_call>not json</tool_call> end <tool_ca"
    content, calls, _ = run(text, seed)
    assert calls == []
    assert content == "a < b, <tool and <tool_call>not json</tool_call> end <tool_ca"


@pytest.mark.parametrize("seed", range(10))
def test_whitespace_after_a_call_is_no_content_but_text_is(seed: int) -> None:
    call = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    assert run(call + "\n", seed)[0] == ""
    assert run(call + "\n Done.", seed)[0] == "\n Done."
    parser = ToolCallParser()
    parser.feed(call + "\n")
    assert parser.feed("Done").content == "\nDone"  # streamed as it comes, not at the end


@pytest.mark.parametrize("seed", range(10))
def test_unclosed_call_at_the_end_still_counts(seed: int) -> None:
    text = 'ok <tool_call>\n{"name": "f", "arguments": {"a": [1, 2]}}'
    content, calls, _ = run(text, seed)
    assert content == "ok " and calls == [("f", '{"a": [1, 2]}')]


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
KNOWN = {"get_weather": WEATHER_SCHEMA}

BARE = [
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '  [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    '```\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n```\n',
]


@pytest.mark.parametrize("text", BARE)
@pytest.mark.parametrize("seed", range(5))
def test_bare_json_calls_of_known_functions(text: str, seed: int) -> None:
    rng = random.Random(seed)
    parser = ToolCallParser(KNOWN)
    content, position = "", 0
    while position < len(text):
        size = rng.randint(1, 9)
        content += parser.feed(text[position : position + size]).content
        position += size
    content += parser.finish().content
    assert content == ""
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [
        ("get_weather", {"city": "Paris"})
    ]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "unknown_fn", "arguments": {}}',
        '{"answer": 42}',
        "{not json",
        "Plain.",
        # arguments that do not validate against the function's schema
        '{"name": "get_weather", "arguments": {"town": "Paris"}}',
        '```json\n{"name": "get_weather", "arguments": {"city": 7}}\n```',
        # text that merely contains a call
        'Call it like this: {"name": "get_weather", "arguments": {"city": "Paris"}}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\nThat is the call.',
        '```python\nget_weather(city="Paris")\n```',
    ],
)
def test_bare_json_that_is_not_a_known_call_is_content(text: str) -> None:
    parser = ToolCallParser(KNOWN)
    content = parser.feed(text).content + parser.finish().content
    assert content == text and parser.calls == []


def test_untagged_calls_can_be_turned_off() -> None:
    text = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'
    parser = ToolCallParser(KNOWN, untagged=False)
    assert parser.feed(text).content + parser.finish().content == text
    assert parser.calls == []


def test_untagged_call_is_held_back_until_the_end() -> None:
    """Streamed: nothing of a possible untagged call is sent before the output ends."""
    parser = ToolCallParser(KNOWN)
    text = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'
    sent = [parser.feed(char) for char in text]
    assert all(not delta.content and not delta.calls for delta in sent)
    end = parser.finish()
    assert end.content == "" and [c.name for c in parser.calls] == ["get_weather"]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "北京 🌧"}}',  # untagged: re-serialised
        '<tool_call>{"arguments": {"city": "北京 🌧"}, "name": "get_weather"}</tool_call>',
    ],
)
def test_reserialised_arguments_keep_their_characters(text: str) -> None:
    """Arguments the parser writes out again read as the model wrote them: `北京`, not
    `\\u5317\\u4eac` (what the tagged in-order path, the other formats and OpenAI send)."""
    parser = ToolCallParser(KNOWN)
    parser.feed(text)
    parser.finish()
    assert [c.arguments for c in parser.calls] == ['{"city": "北京 🌧"}']


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "\\ud800"}}',  # untagged: re-serialised
        '<tool_call>{"arguments": {"city": "\\ud800"}, "name": "get_weather"}</tool_call>',
    ],
)
def test_a_lone_surrogate_escape_in_arguments_becomes_a_replacement_character(text: str) -> None:
    """`\\ud800` decodes to no character, which UTF-8 cannot carry: written out again as is, it
    made encoding the response fail (a 500, or a stream cut short). It becomes U+FFFD."""
    parser = ToolCallParser(KNOWN)
    parser.feed(text)
    parser.finish()
    [call] = parser.calls
    call.arguments.encode("utf-8")
    assert json.loads(call.arguments) == {"city": "\ufffd"}


@pytest.mark.parametrize("name", ["get\\ud800", "get\\u00", "get\\x"])
@pytest.mark.parametrize("seed", range(10))
def test_a_name_that_is_no_text_does_not_break_the_parser(name: str, seed: int) -> None:
    """A name whose escapes are invalid JSON (`\\u00`) or decode to no character: streamed
    (the name is sent before the call closes) the parser raised or passed on a surrogate."""
    text = f'<tool_call>\n{{"name": "{name}", "arguments": {{"a": 1}}}}\n</tool_call>'
    content, calls, _ = run(text, seed)
    for part in (content, *(n for n, _ in calls), *(a for _, a in calls)):
        part.encode("utf-8")
    if name.endswith("ud800"):
        assert calls == [("get\ufffd", '{"a": 1}')]
    else:
        assert content == text and not calls


@pytest.mark.parametrize("ref", ["#/nope", "#/$defs/Loop", "http://schemas.invalid/city.json"])
def test_a_ref_the_validator_cannot_follow_leaves_the_name_to_decide(
    ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's parameters whose `$ref` points nowhere, at itself, or off the schema: the
    call's name decides, as for any schema the validator cannot read. Validating raised (a
    500; on the engine thread, through server/first_call.py, the whole batch failed), and a
    URL was fetched: a client's schema made the server open connections where it named."""
    lookups: list[object] = []

    def no_network(*args: object, **kwargs: object) -> None:
        lookups.append(args)
        raise OSError("no network here")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    schema = {
        "type": "object",
        "properties": {"city": {"$ref": ref}},
        "$defs": {"Loop": {"$ref": "#/$defs/Loop"}},
    }
    parser = ToolCallParser({"get_weather": schema})
    parser.feed('{"name": "get_weather", "arguments": {"city": "Paris"}}')
    parser.finish()
    assert [(call.name, call.arguments) for call in parser.calls] == [
        ("get_weather", '{"city": "Paris"}')
    ]
    assert lookups == []


EVIL = "^(a+)+$"  # backtracks exponentially on a run of a's that does not end the text
SLOW = {
    "pattern": {"properties": {"city": {"type": "string", "pattern": EVIL}}},
    "patternProperties": {"patternProperties": {EVIL: {}}, "additionalProperties": False},
}
PARSE = """
import json, sys
from server.tool_calls import ToolCallParser
schema, arguments = json.loads(sys.argv[1]), sys.argv[2]
parser = ToolCallParser({"get_weather": {"type": "object", **schema}})
parser.feed('{"name": "get_weather", "arguments": ' + arguments + '}')
parser.finish()
print(len(parser.calls))
"""


@pytest.mark.parametrize("schema", SLOW.values(), ids=SLOW.keys())
def test_a_clients_regular_expressions_are_not_run_on_the_models_text(
    schema: dict[str, object],
) -> None:
    """Python's `re` backtracks (holding the GIL): a client's pattern and text the model
    writes (the prompt can ask for it) took exponential time, on the event loop or, through
    server/first_call.py, the engine thread. They are not checked: such a call is one by its
    name and the rest of its schema. (A process of its own: the match cannot be interrupted.)"""
    key = "a" * 40 + "!"
    arguments = {key: 1} if "patternProperties" in schema else {"city": key}
    argv = [sys.executable, "-c", PARSE, json.dumps(schema), json.dumps(arguments)]
    root = Path(__file__).parents[2]
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=20, check=True)
    assert done.stdout.strip() == "1"


LONG_CODE = "function f() { return {a: 1}; }\n" * 5000
LONG = {
    "call": "<tool_call>\n"
    + json.dumps({"name": "write_file", "arguments": {"path": "a.js", "content": LONG_CODE}}),
    "whitespace after a call": '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    + "\n" * 160_000,
}


@pytest.mark.parametrize("text", LONG.values(), ids=LONG.keys())
def test_a_piece_costs_no_more_late_in_a_long_output(text: str) -> None:
    """The parser runs on the event loop: each piece of a long call was copied, sliced,
    stripped and searched from the call's start (200 KB in 4-character pieces took seconds),
    and so was whitespace held after a call. The last pieces now cost what the first do (best
    of three runs: the ratio is ~1 read incrementally, ~9 and more read again each piece)."""
    assert late_over_early_cost(lambda: ToolCallParser().feed, text) < 3


UNIQUE = {"type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}}
# JSON values JSON Schema holds equal or not (jsonschema gives NaN, unequal to itself, too)
ITEMS = '1|1.0|true|false|0|0.0|null|"1"|[1]|[true]|[1.0]|[]|{}|NaN|{"a": 1}|{"a": 1.0}'
ITEMS += '|{"a": true}|{"a": 1, "b": 2}|{"b": 2, "a": 1}'


@pytest.mark.parametrize("seed", range(200))
def test_unique_items_as_json_schema_means_them(seed: int) -> None:
    """`uniqueItems` is checked by hashing (below), with JSON Schema's equality, jsonschema's:
    `1` and `1.0` are equal, `true` and `1` are not, nor `[true]` and `[1]`; key order does not
    count."""
    rng = random.Random(seed)
    items = "[" + ", ".join(rng.choice(ITEMS.split("|")) for _ in range(rng.randint(0, 5))) + "]"
    call = f'{{"name": "f", "arguments": {{"xs": {items}}}}}'
    parser = ToolCallParser({"f": UNIQUE})
    parser.feed(call)
    parser.finish()
    expected = jsonschema.Draft202012Validator(UNIQUE).is_valid({"xs": json.loads(items)})
    assert bool(parser.calls) is expected


def test_unique_items_are_not_compared_pair_by_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """jsonschema compares every pair of items that do not sort (objects, lists): a list of
    10k objects the model wrote (the prompt can ask for it) took minutes to validate, on the
    event loop or, through server/first_call.py, the engine thread. Each item is hashed once."""
    compared = 0
    equal = jsonschema._utils.equal

    def counted(one: object, two: object) -> bool:
        nonlocal compared
        compared += 1
        return bool(equal(one, two))

    monkeypatch.setattr(jsonschema._utils, "equal", counted)
    items = [{"id": i} for i in range(2000)]
    for duplicate in (False, True):
        arguments = {"xs": items + items[-1:] if duplicate else items}
        parser = ToolCallParser({"f": UNIQUE})
        parser.feed(json.dumps({"name": "f", "arguments": arguments}))
        parser.finish()
        assert len(parser.calls) == (not duplicate)
    assert compared < 100

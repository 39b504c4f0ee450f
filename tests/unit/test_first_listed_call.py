"""The one-call end watch (server/first_call.py) in the formats whose calls have no end marker of
their own: mistral (a JSON list after `[TOOL_CALLS]`, or `NAME[ARGS]{…}` calls), pythonic (a
Python list of calls), llama3 (bare objects, maybe after `<|python_tag|>`), and kimi_k3 (whose
calls each close with `<|close|>call<|sep|>` inside the tools section).

Fed a two-call output whole, a character at a time or in random pieces, the watch ends it just
after the first call; the edge (`ChoiceOutput` under `parallel_tool_calls: false`) reads the
output so cut, streamed in any pieces or not, as exactly the first call that the whole output
holds. The samples' strings hold brackets, parentheses, quotes, escapes and the formats' own
markers."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from server.chat_output import ChoiceOutput
from server.first_call import FirstCallEnd

SCHEMAS: dict[str, dict[str, Any] | None] = {
    "get_weather": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    },
    "get_time": {"type": "object", "properties": {"tz": {"type": "string"}}},
}

# (format, the output up to the end of its first call, the rest: a second call)
SAMPLES = {
    "mistral-list": (
        "mistral",
        'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "a \\"b\\" }], '
        '{[TOOL_CALLS] C:\\\\dir\\\\", "days": 3}, "id": "abc123XYZ"}',
        ', {"name": "get_time", "arguments": {"tz": "UTC"}, "id": "def456UVW"}]',
    ),
    "mistral-args": (
        "mistral",
        'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "x} [TOOL_CALLS]get_time[ARGS]{\\"", '
        '"days": 3}',
        '[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}',
    ),
    "llama3-tag": (
        "llama3",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "}{\\"]<|python_tag|>", '
        '"days": 3}}',
        '; {"name": "get_time", "parameters": {"tz": "UTC"}}',
    ),
    "llama3-bare": (
        "llama3",
        '{"name": "get_weather", "parameters": {"city": "Paris {\\\\"}}',
        '\n{"name": "get_time", "parameters": {"tz": "UTC"}}',
    ),
    "pythonic": (
        "pythonic",
        'Checking.<|tool_call_start|>[get_weather(city="Pa)ris], \\"x\\" \'(<|tool_call_start|>",'
        " days=3, hours=[1, (2)], note='it\\'s ) ]', extra={\"k\": [true, null]})",
        ", get_time(tz='a\"b)')]<|tool_call_end|>",
    ),
    "kimi_k3": (
        "kimi_k3",
        '<|open|>tools<|sep|><|open|>call tool="get_weather" index="1"<|sep|>'
        '<|open|>argument key="city" type="string"<|sep|>"Paris" [{<|close|>argument<|sep|>'
        '<|open|>argument key="days" type="integer"<|sep|>3<|close|>argument<|sep|>'
        "<|close|>call<|sep|>",
        '<|open|>call tool="get_time" index="2"<|sep|><|open|>json type="object"<|sep|>'
        '{"tz": "UTC"}<|close|>json<|sep|><|close|>call<|sep|><|close|>tools<|sep|>',
    ),
}


def chunkings(text: str) -> list[list[str]]:
    """The text whole, a character at a time, and cut at random (seeded) into 1 to 9
    characters a piece."""
    cuts = [[text], list(text)]
    for seed in range(20):
        rng, pieces, at = random.Random(seed), [], 0
        while at < len(text):
            size = rng.randint(1, 9)
            pieces.append(text[at : at + size])
            at += size
        cuts.append(pieces)
    return cuts


def watched(watch: FirstCallEnd, pieces: list[str]) -> str:
    """What the engine sends of `pieces` until the watch ends the output."""
    out = ""
    for piece in pieces:
        end = watch(piece)
        if end is not None:
            return out + piece[:end]
        out += piece
    return out


def read(fmt: str, pieces: list[str]) -> tuple[str, list[tuple[str, Any]], list[tuple[str, Any]]]:
    """The edge's reading under `parallel_tool_calls: false`: (content, the calls a reply holds,
    the calls the stream's deltas assemble to)."""
    output = ChoiceOutput(None, False, SCHEMAS, True, fmt, single_call=True)
    deltas = [delta for piece in pieces for delta in output.feed(piece)] + output.finish()
    streamed: dict[int, list[str]] = {}
    for delta in deltas:
        for call in delta.get("tool_calls", []):
            entry = streamed.setdefault(call["index"], ["", ""])
            entry[0] += call["function"].get("name") or ""
            entry[1] += call["function"]["arguments"]
    calls = [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in output.tool_calls
    ]
    assembled = [(name, json.loads(arguments)) for name, arguments in streamed.values()]
    return output.content.strip(), calls, assembled


@pytest.mark.parametrize("untagged", [True, False], ids=["untagged-on", "untagged-off"])
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_the_output_ends_right_after_its_first_call(sample: str, untagged: bool) -> None:
    """(llama3's calls are untagged: where the model's untagged calls are not read, the edge
    reads none, and the output runs on.)"""
    fmt, first, rest = SAMPLES[sample]
    expected = first + rest if fmt == "llama3" and not untagged else first
    for pieces in chunkings(first + rest):
        watch = FirstCallEnd(fmt, SCHEMAS if untagged else None, None, False)
        assert watched(watch, pieces) == expected, pieces


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_the_edge_reads_the_cut_output_as_the_first_call(sample: str) -> None:
    fmt, first, rest = SAMPLES[sample]
    content, calls, assembled = read(fmt, [first + rest])
    assert len(calls) == 1 and assembled == calls  # (the second one left out)
    for pieces in chunkings(first):
        assert read(fmt, pieces) == (content, calls, calls), pieces


def test_a_mistral_list_cut_after_its_first_call_is_no_call_where_more_may_be_sent() -> None:
    """Only a one-call turn reads a list cut open as its calls: with parallel calls, a list the
    output limit cut is the text it was (mlx-lm's reading)."""
    _, first, _ = SAMPLES["mistral-list"]
    output = ChoiceOutput(None, False, SCHEMAS, True, "mistral", single_call=False)
    output.feed(first)
    output.finish()
    assert (output.tool_calls, output.content) == ([], first)


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        # JSON that is no call first: the edge reads the section as text
        ("mistral", '[TOOL_CALLS][{"answer": 42}, {"name": "get_time", "arguments": {}}]'),
        ("mistral", '[TOOL_CALLS]get_weather[ARGS]["Paris"][TOOL_CALLS]get_time[ARGS]{}'),
        ("mistral", "Write [TOOL_CALLS] before your calls.\nget_time[ARGS]{}"),
        # a positional argument: no call the edge's list reading takes
        ("pythonic", '<|tool_call_start|>[get_weather("Paris"), get_time(tz="UTC")]'),
        ("pythonic", "<|tool_call_start|>get_time(tz='UTC')<|tool_call_end|>[get_time()]"),
        # the section's end marker in a string: the edge's section ends there, holding no call
        ("pythonic", '<|tool_call_start|>[get_time(tz="<|tool_call_end|>"), get_time(tz="")]'),
        # a head longer than any function name is not waited for: the output runs on
        ("mistral", f"[TOOL_CALLS]{'x' * 300}[ARGS]{{}}[TOOL_CALLS]get_time[ARGS]{{}}"),
        ("llama3", '<|python_tag|>{"name": "unknown", "parameters": {}}; {"name": "get_time"}'),
    ],
)
def test_no_end_where_the_first_call_is_none_the_edge_reads(fmt: str, text: str) -> None:
    for pieces in chunkings(text)[:3]:
        assert watched(FirstCallEnd(fmt, SCHEMAS, None, False), pieces) == text, pieces


@pytest.mark.parametrize("sample", ["mistral-list", "pythonic", "llama3-tag"])
def test_a_call_written_while_thinking_ends_nothing(sample: str) -> None:
    fmt, first, rest = SAMPLES[sample]
    thought = f"<think>Maybe {first}{rest} then.</think>"
    for pieces in chunkings(thought + first + rest)[:5]:
        watch = FirstCallEnd(fmt, SCHEMAS, ("<think>", "</think>"), False)
        assert watched(watch, pieces) == thought + first, pieces


@pytest.mark.parametrize("sample", ["mistral-list", "mistral-args", "pythonic"])
def test_a_long_first_call_is_read_once(sample: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch runs per token on the engine thread: a long call, a character at a time, is
    scanned once and read by the edge's parser once, when its brackets balance."""
    import ast

    fmt, first, rest = SAMPLES[sample]
    read_chars: list[int] = []
    loads, parse = json.loads, ast.parse

    def counted_loads(text: str, *args: Any, **kwargs: Any) -> Any:
        read_chars.append(len(text))
        return loads(text, *args, **kwargs)

    def counted_parse(text: str, *args: Any, **kwargs: Any) -> Any:
        read_chars.append(len(text))
        return parse(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counted_loads)
    monkeypatch.setattr(ast, "parse", counted_parse)
    filler = ", ".join(f'"k{i}": "a}}])\\\\"' for i in range(800))  # (quoted: Python too)
    if fmt == "pythonic":
        filler = ", ".join(f'k{i}="a}}])\\\\"' for i in range(800))
        first = first[:-1] + ", " + filler + ")"
    else:
        first = first.replace('"days": 3', f'"days": 3, {filler}')
    text = first + rest
    assert watched(FirstCallEnd(fmt, None, None, False), list(text)) == first
    assert sum(read_chars) < 4 * len(text)


# Strings for the calls' arguments: brackets, quotes of both kinds, backslashes and the formats'
# markers (but pythonic's section end, which ends the edge's section wherever it is written).
TRICKY = st.lists(
    st.sampled_from([*"\"'\\[](){},:=; ab\n", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>"]),
    max_size=24,
).map("".join)


def two_calls(shape: str, city: str, tz: str) -> tuple[str, str, str]:
    """(format, the output up to the end of its first call, the rest) with these strings."""
    weather, time = {"city": city}, {"tz": tz}
    if shape == "pythonic":
        return (
            shape,
            f"<|tool_call_start|>[get_weather(city={city!r})",
            f", get_time(tz={tz!r})]<|tool_call_end|>",
        )
    if shape == "mistral-args":
        return (
            "mistral",
            f"[TOOL_CALLS]get_weather[ARGS]{json.dumps(weather, ensure_ascii=False)}",
            f"[TOOL_CALLS]get_time[ARGS]{json.dumps(time, ensure_ascii=False)}",
        )
    fmt, key, opener, separator = {
        "mistral-list": ("mistral", "arguments", "[TOOL_CALLS][", ", "),
        "llama3": ("llama3", "parameters", "<|python_tag|>", "; "),
    }[shape]
    first = json.dumps({"name": "get_weather", key: weather}, ensure_ascii=False)
    second = json.dumps({"name": "get_time", key: time}, ensure_ascii=False)
    return fmt, opener + first, separator + second + ("]" if fmt == "mistral" else "")


@settings(max_examples=300, deadline=None)
@given(
    shape=st.sampled_from(["mistral-list", "mistral-args", "pythonic", "llama3"]),
    city=TRICKY,
    tz=TRICKY,
    seed=st.integers(0, 2**16),
)
def test_any_strings_in_the_calls(shape: str, city: str, tz: str, seed: int) -> None:
    fmt, first, rest = two_calls(shape, city, tz)
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(first + rest):
        size = rng.randint(1, 6)
        pieces.append((first + rest)[at : at + size])
        at += size
    assert watched(FirstCallEnd(fmt, SCHEMAS, None, False), pieces) == first
    whole = read(fmt, [first + rest])
    assert whole[1] == [("get_weather", {"city": city})]
    assert read(fmt, [first[: len(first) // 2], first[len(first) // 2 :]]) == (*whole[:2], whole[1])


# Pieces of the formats' markup, whole calls among them, and the characters that matter.
FRAGMENTS = st.lists(
    st.sampled_from(
        [
            *("[TOOL_CALLS]", "<|tool_call_start|>", "<|tool_call_end|>", "<|python_tag|>"),
            *("get_time", "[ARGS]", '"name"', '"get_time"', '"arguments"', '"tz"', '"UTC"'),
            *('{"name": "get_time", "arguments": {"tz": "UTC"}}', "get_time(tz='UTC')"),
            *('{"name": "get_time", "parameters": {}}', '{"tz": "UTC"}', "tz=", "'UTC'"),
            *(
                "<|open|>tools<|sep|>",
                '<|open|>call tool="get_time"<|sep|>',
                "<|close|>call<|sep|>",
            ),
            *"{}[]()\"'\\:,;= \n",
        ]
    ),
    max_size=30,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(
    fmt=st.sampled_from(["mistral", "pythonic", "llama3", "kimi_k3"]),
    text=FRAGMENTS,
    pieces=st.integers(1, 7),
)
@example(fmt="kimi_k3", text="<|open|>tools<|sep|><|close|>call<|sep|>More.", pieces=1)
def test_an_end_is_where_the_edge_reads_exactly_one_call(fmt: str, text: str, pieces: int) -> None:
    """Whatever the model writes: the watch never raises, ends the same way in any pieces, and
    only where the edge reads the output so far as one call."""
    cut = watched(FirstCallEnd(fmt, SCHEMAS, None, False), list(text))
    chunks = [text[at : at + pieces] for at in range(0, len(text), pieces)]
    assert watched(FirstCallEnd(fmt, SCHEMAS, None, False), chunks) == cut
    if cut != text:
        assert len(read(fmt, [cut])[1]) == 1, cut

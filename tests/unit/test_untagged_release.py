"""Output held back as possibly untagged tool calls (server/untagged.py) is let go as soon as it
cannot be them, then streams as text; decided on the text alone, whatever its chunking."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from server.tool_calls import ParsedDeltas, ToolCallParser
from server.tool_formats import call_parser
from tests.fakes import FakeEngine
from tests.servers import serve

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
KNOWN = {"get_weather": WEATHER_SCHEMA}
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'

# (the text up to where it can no longer be calls, the rest)
RELEASED = {
    "a whole object that is no call": ('{"answer": 42}', "\nThe answer is 42."),
    "arguments that do not validate": (
        '{"name": "get_weather", "arguments": {"town": "Paris"}}',
        "\nOops.",
    ),
    "text after a call": (f"{PARIS}\nT", "hat is how to call it."),
    "a name of no known function": ('{"name": "search"', ', "arguments": {"q": "x"}}'),
    "the name after the arguments": (
        '{"arguments": {"name": "get_weather", "city": "Paris"}, "name": "search"',
        "}",
    ),
    "the name after other keys": (
        '{"id": "1", "type": "function", "name": "search"',
        ', "arguments": {}}',
    ),
    "a name that is no string": ('{"name": 7, "arguments"', ": {}}"),
    "a fence holding no call": ('```json\n{"name": "search"', ', "arguments": {}}\n```'),
    "text after a fence": (f"```json\n{PARIS}\n```\nT", "hat is the call."),
    "a fence of another language": ("```jsonc", '\n{"a": 1}\n```'),
    "a list holding no call": ('[{"name": "search"', ', "arguments": {}}]'),
    "a list holding a string": (f'[{PARIS}, "', 'x"]'),
    "a list's call that does not validate": (
        '[{"name": "get_weather", "arguments": {"city": 7}}',
        "]",
    ),
    "a second value that is no call": (f'{PARIS}\n{{"name": "search"', "}"),
}


def fed(parser: Any, pieces: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """(content, [(name, arguments)]) from feeding `pieces`, then finishing."""
    deltas = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    return "".join(d.content for d in deltas), [(c.name, c.arguments) for c in parser.calls]


@pytest.mark.parametrize(("decided", "rest"), RELEASED.values(), ids=RELEASED.keys())
def test_held_text_goes_out_once_it_cannot_be_calls(decided: str, rest: str) -> None:
    parser = ToolCallParser(KNOWN)
    sent = [parser.feed(char) for char in decided]
    assert all(not delta.content for delta in sent[:-1])  # held while it may be calls
    assert sent[-1].content == decided  # let go at the character that decides
    assert parser.feed(rest).content == rest  # then streamed as text
    assert parser.finish().content == "" and parser.calls == []


@pytest.mark.parametrize(
    "text",
    [
        PARIS,
        f"{PARIS}\n{PARIS};",
        f"[{PARIS}, {PARIS}]",
        f"```json\n{PARIS}\n```\n",
        '<|python_tag|>{"arguments": {"city": "Paris"}, "name": "get_weather"}',
    ],
)
def test_calls_are_still_held_to_the_end(text: str) -> None:
    parser = ToolCallParser(KNOWN)
    assert not any(parser.feed(char).content for char in text)
    assert parser.finish().content == ""
    assert {name for name, _ in fed(ToolCallParser(KNOWN), [text])[1]} == {"get_weather"}


def test_tagged_calls_after_let_go_text_are_calls() -> None:
    """Let go, the output is read as text from its start: a tagged call later in it is a call
    (as in any text), whether the text was let go while streaming or at the end."""
    text = '{"answer": 42}\n<tool_call>\n' + PARIS + "\n</tool_call>"
    for pieces in ([text], list(text)):
        content, calls = fed(ToolCallParser(KNOWN), pieces)
        assert content == '{"answer": 42}\n'
        assert calls == [("get_weather", '{"city": "Paris"}')]


CHUNKED = [
    *(decided + rest for decided, rest in RELEASED.values()),
    PARIS,
    f"[{PARIS}]",
    f"```json\n{PARIS}\n```",
    # the first "name" decides, also before a duplicate that json.loads would keep
    '{"name": "search", "name": "get_weather", "arguments": {"city": "Paris"}}',
    '{"answer": "a \\"quoted\\" \\\\ brace }"} and text',
    '{"answer": 42}\n<tool_call>\n' + PARIS + "\n</tool_call>",
    '```json\n{"name": "get_weather", "arguments": {"city": "```"}}\n```',
]


@pytest.mark.parametrize("text", CHUNKED)
def test_the_same_output_in_every_split(text: str) -> None:
    whole = fed(ToolCallParser(KNOWN), [text])
    assert fed(ToolCallParser(KNOWN), list(text)) == whole
    for split in range(1, len(text)):
        assert fed(ToolCallParser(KNOWN), [text[:split], text[split:]]) == whole, split


def test_a_duplicate_name_is_read_by_its_first() -> None:
    text = '{"name": "search", "name": "get_weather", "arguments": {"city": "Paris"}}'
    assert fed(ToolCallParser(KNOWN), [text]) == (text, [])


def test_section_formats_let_go_too() -> None:
    """Formats parsed by sections (here Mistral's) hold untagged JSON the same way, then read
    on as text with sections."""
    parser = call_parser("mistral", KNOWN)
    sent = [parser.feed(char) for char in '{"answer": 42}']
    assert not any(d.content for d in sent[:-1]) and sent[-1].content == '{"answer": 42}'
    held = parser.feed(f" then [TOOL_CALLS][{PARIS}]")
    end: ParsedDeltas = parser.finish()
    assert held.content + end.content == " then "
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [
        ("get_weather", {"city": "Paris"})
    ]


REPLY = '{"answer": 42}\n' + "and so on " * 40
TOOL = {"type": "object", "properties": {"city": {"type": "string"}}}
STREAMED = {
    "/v1/chat/completions": {
        "messages": [{"role": "user", "content": "go"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": TOOL}}],
    },
    "/v1/responses": {
        "input": "go",
        "tools": [{"type": "function", "name": "get_weather", "parameters": TOOL}],
    },
    "/v1/messages": {
        "messages": [{"role": "user", "content": "go"}],
        "tools": [{"name": "get_weather", "input_schema": TOOL}],
    },
}


@pytest.mark.parametrize("path", STREAMED)
async def test_streamed_json_that_is_no_call_arrives_before_the_end(path: str) -> None:
    """Over a socket: the reply's text reaches the client while the model is still writing it
    (it came only when the output ended, after keep-alives)."""
    engine = FakeEngine(reply=REPLY, token_delay_s=0.005, context_length=4096)
    body = {"model": "fake", "stream": True, "max_tokens": 1000, **STREAMED[path]}
    with serve(create_app(Settings(), EnginePool([engine]))) as url:
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as http,
            http.stream("POST", path, json=body) as stream,
        ):
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if "answer" in line:
                    generated = engine.tokens_generated
                    break
            else:
                pytest.fail("the reply never arrived")
    assert generated < len(REPLY) / 2


@pytest.mark.parametrize("fmt", ["qwen3_coder", "kimi_k2"])
def test_a_section_format_holds_a_prefixed_call_in_every_split(fmt: str) -> None:
    """Where the `[TOOL_CALLS]` prefix is whole before the JSON's first character, the parser
    reading the held output cannot tell yet whether it may be calls: that is still held, not
    let go as text."""
    text = f"[TOOL_CALLS][{PARIS}]"
    whole = fed(call_parser(fmt, KNOWN), [text])
    assert whole == ("", [("get_weather", '{"city": "Paris"}')])
    assert fed(call_parser(fmt, KNOWN), list(text)) == whole
    for split in range(1, len(text)):
        assert fed(call_parser(fmt, KNOWN), [text[:split], text[split:]]) == whole, split

"""server/json_prefix.py: what of a tool_use's streamed input the anthropic SDK can read (it
parses the input after each `input_json_delta` with jiter's partial mode, and raises on text
that cannot begin a JSON object), and the Messages stream that forwards only that."""

from __future__ import annotations

import json
import random
from typing import Any

import jiter
import pytest
from anthropic import AsyncAnthropic
from hypothesis import given, settings
from hypothesis import strategies as st

from server.json_prefix import JsonPrefix
from tests.fakes import FakeEngine

SCALARS = st.none() | st.booleans() | st.integers() | st.text()
VALUES = st.recursive(
    SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
JSONISH = st.text(alphabet='{}[]":,. \n\t-+eE0123456789truefalsnl\\u0aAdDcC8"\x01é😀', max_size=60)


def forwarded(text: str, seed: int) -> str:
    """What the stream forwards of `text` cut at random (seeded) into 1 to 5 characters."""
    rng, prefix, out, at = random.Random(seed), JsonPrefix(), [], 0
    while at < len(text):
        size = rng.randint(1, 5)
        out.append(prefix.feed(text[at : at + size]))
        at += size
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), VALUES, max_size=5), st.booleans(), st.integers(0, 9))
def test_an_object_is_forwarded_whole_in_any_pieces(
    value: dict[str, Any], ascii_only: bool, seed: int
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=seed % 3 or None)
    assert forwarded(text, seed) == text


@settings(max_examples=1000, deadline=None)
@given(JSONISH, st.integers(0, 9))
def test_what_is_forwarded_is_always_read_by_the_sdks_parser(text: str, seed: int) -> None:
    sent = forwarded(text, seed)
    assert sent == forwarded(text, seed + 1) == JsonPrefix().feed(text)
    if sent:
        jiter.from_json(sent.encode(), partial_mode=True)  # raises where the SDK would
    try:
        whole = json.loads(text)
    except ValueError:
        return
    if isinstance(whole, dict) and "\\u" not in text:
        assert sent == text.lstrip()


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ('{"a": "x\ny"}', '{"a": "x'),  # a raw control character in a string
        ('{"a": 1,}', '{"a": 1,'),
        ('{"a": True}', '{"a": '),
        ("{'a': 1}", "{"),
        ('{"a": 01}', '{"a": 0'),
        ("[1, 2]", ""),  # no object: `tool_input` reads {}
        ('{"a": 1} x', '{"a": 1} '),
        ('{"a": "\\ud800x"}', '{"a": "\\ufffdx"}'),  # lone surrogates read as tool_input does
        ('{"a": "\\udc00\\ud800"}', '{"a": "\\ufffd\\ufffd"}'),
        ('{"a": "\\ud83d\\ude00"}', '{"a": "\\ud83d\\ude00"}'),
        ('{"a": ' * 100 + "1" + "}" * 100, '{"a": ' * 100 + "1" + "}" * 100),
        ('{"a": ' * 101 + "1" + "}" * 101, '{"a": ' * 100),  # deeper than a body may be
    ],
)
def test_what_is_forwarded(text: str, sent: str) -> None:
    assert JsonPrefix().feed(text) == sent
    prefix = JsonPrefix()  # a character at a time
    assert "".join(prefix.feed(char) for char in text) == sent


WRITE = '<tool_call>\n{"name": "write", "arguments": {"path": "a.py", "new": True}}\n</tool_call>'
TOOLS: list[Any] = [
    {
        "name": "write",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        },
    }
]


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(reply=WRITE, context_length=4096)


async def test_the_sdks_stream_reads_a_call_whose_arguments_are_no_json(
    claude: AsyncAnthropic,
) -> None:
    """Python's `True` (small models write it): the SDK's stream raised "Unable to parse tool
    parameter JSON from model" at the delta holding it. (A raw newline in a string, as small
    models write code, is escaped before it gets here: tests/unit/test_strict_strings.py.)"""
    fields: Any = {"model": "fake", "max_tokens": 100, "tools": TOOLS,
                   "messages": [{"role": "user", "content": "write it"}]}  # fmt: skip
    whole = await claude.messages.create(**fields)
    async with claude.messages.stream(**fields) as stream:
        streamed = await stream.get_final_message()
    [call] = [block for block in whole.content if block.type == "tool_use"]
    assert call.input == {}
    assert [b.type for b in streamed.content] == [b.type for b in whole.content]
    [streamed_call] = [block for block in streamed.content if block.type == "tool_use"]
    assert streamed_call.input == {"path": "a.py"}  # the SDK reads the JSON sent so far

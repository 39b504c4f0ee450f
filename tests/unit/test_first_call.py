"""The end watch of a one-call turn (server/first_call.py): fed an output as the engine sends it,
it ends the output just after the first call, tagged or untagged, and nowhere else."""

from __future__ import annotations

import pytest

from server.first_call import FirstCallEnd

SCHEMAS = {"get_weather": {"type": "object", "properties": {"city": {"type": "string"}}}}
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
LONDON = '{"name": "get_weather", "arguments": {"city": "London"}}'
THINK = ("<think>", "</think>")


def kept(watch: FirstCallEnd, text: str, piece: int) -> str:
    """The text the engine sends, in pieces of `piece` characters, until the watch ends it."""
    out = ""
    for start in range(0, len(text), piece):
        chunk = text[start : start + piece]
        end = watch(chunk)
        if end is not None:
            return out + chunk[:end]
        out += chunk
    return out


@pytest.mark.parametrize("piece", [1, 3, 1000])
@pytest.mark.parametrize(
    ("text", "first"),
    [
        (  # tagged
            f"Checking.\n<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{LONDON}\n</tool_call>",
            f"Checking.\n<tool_call>\n{PARIS}\n</tool_call>",
        ),
        (f"{PARIS}\n{LONDON}", PARIS),  # bare objects, one a line
        (f"```json\n{PARIS}\n```\n```json\n{LONDON}\n```", f"```json\n{PARIS}\n```"),
    ],
    ids=["tagged", "bare", "fenced"],
)
def test_the_output_ends_after_its_first_call(text: str, first: str, piece: int) -> None:
    assert kept(FirstCallEnd("json_tools", SCHEMAS, None, False), text, piece) == first


@pytest.mark.parametrize(
    "text",
    [
        '{"answer": 42}\n{"answer": 43}',  # JSON, but no call
        f"```json\n{PARIS}\n{LONDON}\n```",  # one fence of two calls: the edge keeps the first
        '{"name": "unknown", "arguments": {}}\n' + PARIS,  # a function not offered
    ],
)
def test_no_end_where_the_output_begins_with_no_single_call(text: str) -> None:
    assert kept(FirstCallEnd("json_tools", SCHEMAS, None, False), text, 1) == text


def test_a_fence_is_an_untagged_call_only_when_its_json_is_one() -> None:
    """A fence holding a tagged call (which the edge reads as text with a call in it) is no
    untagged call: it ends nothing, here for llama3, whose tagged calls have no end marker."""
    text = f"```json\n<tool_call>\n{PARIS}\n</tool_call>\n```\n{LONDON}"
    assert kept(FirstCallEnd("llama3", SCHEMAS, None, False), text, 1) == text


def test_untagged_calls_are_left_alone_where_the_edge_reads_none() -> None:
    text = f"{PARIS}\n{LONDON}"
    assert kept(FirstCallEnd("json_tools", None, None, False), text, 1) == text


@pytest.mark.parametrize("opened", [False, True])
def test_a_marker_written_while_thinking_ends_nothing(opened: bool) -> None:
    thought = ("" if opened else "<think>") + "I'll write </tool_call> once.</think>"
    call = f"<tool_call>\n{PARIS}\n</tool_call>"
    text = f"{thought}{call}\n<tool_call>\n{LONDON}\n</tool_call>"
    assert kept(FirstCallEnd("json_tools", SCHEMAS, THINK, opened), text, 2) == thought + call


def test_another_formats_marker_ends_its_first_call() -> None:
    call = '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris'
    call += "</parameter>\n</invoke>"
    text = f'{call}\n<invoke name="get_weather">\n</invoke>\n</minimax:tool_call>'
    assert kept(FirstCallEnd("minimax_m2", SCHEMAS, None, False), text, 4) == call


DEEP = '{"name": "get_weather", "arguments": {"city": ' + "[" * 5000 + "]" * 5000 + "}}"


@pytest.mark.parametrize("first", [DEEP, f"```json\n{DEEP}\n```"], ids=["bare", "fenced"])
def test_json_nested_too_deeply_to_parse_is_no_call(first: str) -> None:
    """A prompt can make the model write it; raising on the engine thread would fail the step,
    and every request of the batch with it."""
    text = f"{first}\n{PARIS}"
    assert kept(FirstCallEnd("json_tools", SCHEMAS, None, False), text, 7) == text

"""The end watch of a one-call turn (server/first_call.py): fed an output as the engine sends it,
it ends the output just after the first call, tagged or untagged, and nowhere else."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx
import pytest

from engines.types import ChatModelInfo
from server import first_call
from server.chat_output import ChoiceOutput
from server.first_call import FirstCallEnd
from tests.fakes import FakeEngine

SCHEMAS: dict[str, dict[str, Any] | None] = {
    "get_weather": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    }
}
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
    assert kept(FirstCallEnd("json_tools", SCHEMAS, None, False, untagged=False), text, 1) == text


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


@pytest.mark.parametrize("piece", [1, 5, 1000])
def test_the_end_does_not_depend_on_how_the_output_is_cut(piece: int) -> None:
    """An untagged call and a later marker in one piece: the output ends after the call, as
    where they come in pieces of their own (the marker ended it, leaving the text between)."""
    text = f"{PARIS}\nThat is all.\n</tool_call>\nMore."
    assert kept(FirstCallEnd("json_tools", SCHEMAS, None, False), text, piece) == PARIS


def test_a_long_first_value_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch runs per token on the engine thread: the first value is decoded once, when its
    brackets balance, not again at every '}' the model writes (quadratic in a long output)."""
    decoded: list[int] = []
    raw_decode = json.JSONDecoder.raw_decode

    def counted(self: json.JSONDecoder, text: str, idx: int = 0) -> tuple[Any, int]:
        decoded.append(len(text))
        return raw_decode(self, text, idx)

    monkeypatch.setattr(json.JSONDecoder, "raw_decode", counted)
    rows = json.dumps({"rows": [{"id": i, "name": "}`"} for i in range(500)]})
    text = f"{rows}\n{PARIS}"
    assert kept(FirstCallEnd("json_tools", SCHEMAS, None, False), text, 1) == text
    assert sum(decoded) < 4 * len(text)


@pytest.mark.parametrize("piece", [1, 4, 1000])
def test_a_marker_before_any_call_opened_ends_nothing(piece: int) -> None:
    """The edge reads a lone closing marker as text: the output goes on to its first call."""
    first = f"Write </tool_call> to close one.\n<tool_call>\n{PARIS}\n</tool_call>"
    text = f"{first}\n<tool_call>\n{LONDON}\n</tool_call>"
    assert kept(FirstCallEnd("json_tools", SCHEMAS, None, False), text, piece) == first


def edge_calls(fmt: str, text: str) -> tuple[str, list[tuple[str, Any]]]:
    """The edge's reading of a one-call turn's output: its content and calls."""
    output = ChoiceOutput(None, False, SCHEMAS, True, fmt, single_call=True)
    output.feed(text)
    output.finish()
    calls = output.tool_calls
    return output.content, [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


K3_BROKEN = '<|open|>call tool="get_weather"<|sep|><|open|>json<|sep|>{"city": <|close|>json<|sep|>'
MM_PARIS = '\n<parameter name="city">Paris</parameter>\n</invoke>'
K3_PARIS = '<|open|>call tool="get_weather"<|sep|><|open|>argument key="city"<|sep|>Paris'
K3_PARIS += "<|close|>argument<|sep|><|close|>call<|sep|>"


@pytest.mark.parametrize("piece", [1, 3, 1000])
@pytest.mark.parametrize(
    ("fmt", "first", "rest"),
    [
        (  # a section the edge reads as text, then one holding a call
            "qwen3_coder",
            "<tool_call>not a call</tool_call>\n<tool_call>\n<function=get_weather>\n"
            "<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
            "\n<tool_call>\n<function=get_weather>\n</function>\n</tool_call>",
        ),
        (  # a section whose value does not convert to its schema's type is text to the edge
            "qwen3_coder",
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n"
            "<parameter=days>\nthree\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
            "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
            "</tool_call>",
            "\n<tool_call>\n<function=get_weather>\n</function>\n</tool_call>",
        ),
        (  # a <tool_call> the edge reads as text (its head not whole, no JSON), then a call
            "json_tools",
            '<tool_call>\n{"name": "get_weather", "city": "Oslo"}}\n</tool_call>\n'
            f"<tool_call>\n{PARIS}\n</tool_call>",
            f"\n<tool_call>\n{LONDON}\n</tool_call>",
        ),
        (  # a section of no call it reads, a call's markup after its end (text), then a call
            "minimax_m2",
            f"<minimax:tool_call>\n<invoke>{MM_PARIS}</minimax:tool_call>\n<invoke name="
            f'"get_weather">{MM_PARIS}<minimax:tool_call>\n<invoke name="get_weather">{MM_PARIS}',
            "\n</minimax:tool_call>",
        ),
        (  # a call the edge skips (its JSON does not parse), then one it reads
            "kimi_k3",
            f"<|open|>tools<|sep|>{K3_BROKEN}<|close|>call<|sep|>{K3_PARIS}",
            f"{K3_PARIS}<|close|>tools<|sep|>",
        ),
    ],
    ids=["section", "typed section", "tagged", "closed section", "call in a section"],
)
def test_a_marker_ends_the_output_only_after_a_call_the_edge_reads(
    fmt: str, first: str, rest: str, piece: int
) -> None:
    """Cut at the first marker, the output would be text where the whole of it holds a call."""
    assert kept(FirstCallEnd(fmt, SCHEMAS, None, False), first + rest, piece) == first
    whole = edge_calls(fmt, first + rest)
    assert whole[1] == [("get_weather", '{"city": "Paris"}')]
    assert edge_calls(fmt, first) == whole


def test_a_section_without_calls_is_read_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each check reads the section so far (on the engine thread): after a few markers that end
    no call the edge reads, the watch stops checking, and the output runs on."""
    reads: list[int] = []
    read = first_call.section_calls

    def counted(fmt: str, body: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(len(body))
        return read(fmt, body, *args, **kwargs)

    monkeypatch.setattr(first_call, "section_calls", counted)
    text = f"<|open|>tools<|sep|>{f'{K3_BROKEN}<|close|>call<|sep|>' * 200}{K3_PARIS}"
    assert kept(FirstCallEnd("kimi_k3", SCHEMAS, None, False), text, 1) == text
    assert len(reads) == first_call._CHECKS


class UntaggedOffEngine(FakeEngine):
    """A qwen3_coder model configured with `untagged_tool_calls: false`."""

    def loaded_info(self) -> ChatModelInfo:
        info = super().loaded_info()
        return dataclasses.replace(info, tool_format="qwen3_coder", untagged_tool_calls=False)


@pytest.mark.parametrize("fake_engine", [UntaggedOffEngine(context_length=4096)])
async def test_the_watch_types_sections_by_the_requests_functions_with_untagged_calls_off(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """The request's functions type a section's values (its untagged calls aside): a value
    that does not convert (`three` for an integer) makes the section text at the edge."""
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMAS[
        "get_weather"]}}  # fmt: skip
    body = {"model": "fake", "messages": [{"role": "user", "content": "weather?"}],
            "tools": [tool], "parallel_tool_calls": False}  # fmt: skip
    assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
    end_watch = fake_engine.requests[-1].end_watch
    assert end_watch is not None
    typed = "<tool_call>\n<function=get_weather>\n<parameter=days>\nthree\n</parameter>\n"
    call = "<tool_call>\n<function=get_weather>\n<parameter=days>\n3\n</parameter>\n"
    first = f"{typed}</function>\n</tool_call>\n{call}</function>\n</tool_call>"
    assert kept(end_watch(), f"{first}\n{call}</function>\n</tool_call>", 1) == first
    assert kept(end_watch(), f"{PARIS}\n{LONDON}", 1) == f"{PARIS}\n{LONDON}"  # (untagged off)

"""Raw control characters inside a tool call's JSON strings (small models write a file's lines
so) reach every API escaped, as the strict JSON they mean (server/strict_strings.py, applied in
server/chat_output.py)."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from server.chat_output import ChoiceOutput
from server.first_call import FirstCallEnd
from server.strict_strings import StrictStrings, strict_json
from tests.fakes import FakeEngine

CONTENT = "def f():\n\treturn 1\r\n\x00\x1f\b\f"
ARGUMENTS = {"path": "a.py", "content": CONTENT}
RAW_ARGUMENTS = '{"path": "a.py",\n "content": "' + CONTENT + '"}'  # raw, outside strings too
TAGGED = f'<tool_call>\n{{"name": "write", "arguments": {RAW_ARGUMENTS}}}\n</tool_call>'
UNTAGGED = f'{{"name": "write", "arguments": {RAW_ARGUMENTS}}}'
FENCED = f"```json\n{UNTAGGED}\n```"
SCHEMA = {
    "type": "object",
    "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
}


def _pieces(text: str, how: str, seed: int = 0) -> list[str]:
    if how == "whole":
        return [text]
    if how == "chars":
        return list(text)
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(text):
        step = rng.randint(1, 6)
        pieces.append(text[at : at + step])
        at += step
    return pieces


def _fed(text: str, how: str, seed: int = 0) -> str:
    strict = StrictStrings()
    return "".join(strict.feed(piece) for piece in _pieces(text, how, seed))


_ALPHABET = ['"', "\\", "{", "}", "[", "]", ":", ",", "a", "1", " ", "\n", "\t", "\x00", "u", "é"]


def _jsonish(rng: random.Random) -> str:
    """JSON with raw control characters put in, or random text of JSON's characters."""
    if rng.random() < 0.5:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 30)))
    value = {"k": "x" * rng.randint(0, 3), "n": [1, {"s": 'q"\\\\u'}], "t": "\\u00e9\\ud83d\\ude00"}
    text = json.dumps(value)
    for _ in range(rng.randint(0, 4)):
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice("\n\t\r\x00\x1f") + text[at:]
    return text


def _loads(text: str, strict: bool) -> tuple[bool, Any]:
    try:
        return True, json.loads(text, strict=strict)
    except ValueError:
        return False, None


@pytest.mark.parametrize("seed", range(300))
def test_the_output_is_strict_json_exactly_where_loose_json_reads_the_input(seed: int) -> None:
    rng = random.Random(seed)
    text = _jsonish(rng)
    out = strict_json(text)
    for how in ("chars", "random"):
        assert _fed(text, how, seed) == out  # however it is cut
    loose = _loads(text, strict=False)
    assert _loads(out, strict=True) == loose
    if _loads(text, strict=True)[0]:
        assert out == text  # valid JSON: byte for byte


def test_each_control_character_has_its_escape() -> None:
    text = '"' + "".join(map(chr, range(32))) + '" \n\t'
    out = strict_json(text)
    assert out.endswith('" \n\t')  # outside strings: JSON's whitespace, kept
    assert "\\b\\t\\n\\u000b\\f\\r\\u000e" in out and "\\u0000" in out and "\\u001f" in out
    assert json.loads(out) == "".join(map(chr, range(32)))
    assert strict_json('"\\\n"') == '"\\\n"'  # an escaped raw newline: no JSON, left so
    assert _fed('"a\\"\n"', "chars") == '"a\\"\\n"'  # an escape split across pieces


def _chat_deltas(output: ChoiceOutput, pieces: list[str]) -> tuple[str, list[dict[str, Any]]]:
    deltas = [delta for piece in pieces for delta in output.feed(piece)] + output.finish()
    streamed = "".join(
        call["function"]["arguments"] for delta in deltas for call in delta.get("tool_calls", [])
    )
    return streamed, output.tool_calls


@pytest.mark.parametrize(
    ("tool_format", "text"),
    [
        ("json_tools", TAGGED),
        ("json_tools", UNTAGGED),
        ("json_tools", FENCED),
        ("qwen3_coder", UNTAGGED),
        (
            "qwen3_coder",
            "<tool_call>\n<function=write>\n<parameter=path>\na.py\n</parameter>\n"
            f"<parameter=content>\n{CONTENT}\n</parameter>\n</function>\n</tool_call>",
        ),
    ],
)
@pytest.mark.parametrize("how", ["chars", "random", "whole"])
def test_a_calls_arguments_are_strict_json_in_any_pieces(
    tool_format: str, text: str, how: str
) -> None:
    for seed in range(5 if how == "random" else 1):
        output = ChoiceOutput(None, False, {"write": SCHEMA}, tool_format=tool_format)
        streamed, calls = _chat_deltas(output, _pieces(text, how, seed))
        [call] = calls
        assert streamed == call["function"]["arguments"]
        assert json.loads(streamed) == ARGUMENTS  # strict
        assert output.finish_reason("stop") == "tool_calls"
        assert not output.content.strip()


def test_valid_arguments_go_out_as_the_model_wrote_them() -> None:
    arguments = '{ "path":"a.py" ,\n\t"content" : "\\u00e9\\n\\ud83d\\ude00é" }'
    text = f'<tool_call>{{"name": "write", "arguments": {arguments}}}</tool_call>'
    for how in ("chars", "random", "whole"):
        output = ChoiceOutput(None, False, {"write": SCHEMA})
        streamed, [call] = _chat_deltas(output, _pieces(text, how))
        assert streamed == call["function"]["arguments"] == arguments


def test_a_cut_call_stays_as_the_model_wrote_it_but_escaped() -> None:
    text = '<tool_call>{"name": "write", "arguments": {"content": "a\nb'
    output = ChoiceOutput(None, False, {"write": SCHEMA})
    streamed, [call] = _chat_deltas(output, _pieces(text, "chars"))
    assert streamed == call["function"]["arguments"] == '{"content": "a\\nb'
    assert output.finish_reason("stop") == "stop"  # no whole JSON


@pytest.mark.parametrize("text", [UNTAGGED, FENCED], ids=["bare", "fenced"])
@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_a_one_call_turn_ends_after_such_an_untagged_call(text: str, piece: int) -> None:
    """The end watch (parallel_tool_calls false) reads untagged calls as the edge does."""
    watch = FirstCallEnd("json_tools", {"write": SCHEMA}, None, False)
    output, kept = f"{text}\n{text}", ""
    for start in range(0, len(output), piece):
        chunk = output[start : start + piece]
        end = watch(chunk)
        if end is not None:
            kept += chunk[:end]
            break
        kept += chunk
    assert kept == text


# -- through each API, on a scripted engine ------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "write", "parameters": SCHEMA}}


@pytest.fixture(params=[TAGGED, FENCED], ids=["tagged", "fenced"])
def fake_engine(request: pytest.FixtureRequest) -> FakeEngine:
    return FakeEngine(reply=request.param, context_length=4096)


async def test_chat_completions(client: AsyncOpenAI) -> None:
    fields: Any = {"model": "fake", "tools": [TOOL],
                   "messages": [{"role": "user", "content": "write it"}]}  # fmt: skip
    whole = await client.chat.completions.create(**fields)
    [call] = whole.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == ARGUMENTS  # type: ignore[union-attr]
    assert whole.choices[0].finish_reason == "tool_calls"
    streamed, reasons = "", []
    async for chunk in await client.chat.completions.create(**fields, stream=True):
        for delta in chunk.choices[0].delta.tool_calls or []:
            streamed += (delta.function and delta.function.arguments) or ""
        reasons.append(chunk.choices[0].finish_reason)
    assert json.loads(streamed) == ARGUMENTS
    assert reasons[-1] == "tool_calls"


async def test_responses(client: AsyncOpenAI) -> None:
    tool: Any = {"type": "function", "name": "write", "parameters": SCHEMA}
    whole = await client.responses.create(model="fake", input="write it", tools=[tool])
    [call] = whole.output
    assert call.type == "function_call" and json.loads(call.arguments) == ARGUMENTS
    async with client.responses.stream(model="fake", input="write it", tools=[tool]) as stream:
        kind = "response.function_call_arguments.delta"
        deltas = [event.delta async for event in stream if event.type == kind]
        final = await stream.get_final_response()
    [streamed] = final.output
    assert streamed.type == "function_call"
    assert "".join(deltas) == streamed.arguments and json.loads(streamed.arguments) == ARGUMENTS


async def test_messages(claude: AsyncAnthropic) -> None:
    """The SDK parses each input_json_delta strictly (jiter): it got the input up to the raw
    newline only, and the whole message `input: {}`."""
    tool: Any = {"name": "write", "input_schema": SCHEMA}
    fields: Any = {"model": "fake", "max_tokens": 1000, "tools": [tool],
                   "messages": [{"role": "user", "content": "write it"}]}  # fmt: skip
    whole = await claude.messages.create(**fields)
    async with claude.messages.stream(**fields) as stream:
        streamed = await stream.get_final_message()
    for message in (whole, streamed):
        [call] = [block for block in message.content if block.type == "tool_use"]
        assert call.input == ARGUMENTS
        assert message.stop_reason == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
async def test_ollama_chat(http: httpx.AsyncClient, stream: bool) -> None:
    """Ollama's reply carries arguments as an object: a call it could not parse was left out."""
    body = {"model": "fake", "tools": [TOOL], "stream": stream,
            "messages": [{"role": "user", "content": "write it"}]}  # fmt: skip
    response = await http.post("/api/chat", json=body)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    assert calls == [{"function": {"name": "write", "arguments": ARGUMENTS}}]

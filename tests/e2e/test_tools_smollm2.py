"""Structured outputs and forced tool calls on the embedded SmolLM2, through the strict SDK and
its helpers (`parse`, `stream`). SmolLM2's template has no tool support: mlxd's generic tool
prompt describes the tools, and the grammar guarantees the call's shape."""

from __future__ import annotations

import json

from pydantic import BaseModel

from tests.helpers import WEATHER, LiveServer

MODEL = "smollm2-135m-instruct"


TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}


class Capital(BaseModel):
    city: str
    country: str


def test_parse_returns_a_pydantic_object(live: LiveServer) -> None:
    completion = live.client().chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        response_format=Capital,
        temperature=0,
        max_tokens=60,
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Capital)
    assert "paris" in message.parsed.city.lower()


def test_json_object_mode_gives_an_object(live: LiveServer) -> None:
    completion = live.client().chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": 'A JSON object with the keys "name" and "colour" of a cat.'}
        ],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=150,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_named_tool_choice_streams_a_valid_call(live: LiveServer) -> None:
    with live.client().chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather like in Paris?"}],
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=60,
    ) as stream:
        argument_deltas = [
            event for event in stream if event.type == "tool_calls.function.arguments.delta"
        ]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    assert argument_deltas, "arguments arrive as streamed fragments"


def test_required_tool_choice_streams_valid_calls(live: LiveServer) -> None:
    with live.client().chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=60,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name in ("get_weather", "get_time")
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == ({"city"} if call.function.name == "get_weather" else {"timezone"})


def test_tool_results_round_trip(live: LiveServer) -> None:
    """A conversation with an assistant tool call and its result renders and is answered."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    completion = live.client().chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What is the weather like in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        temperature=0,
        max_tokens=40,
    )
    choice = completion.choices[0]
    assert choice.message.content or choice.message.tool_calls

"""Opt-in (MLXD_OPTIN=1; CI sets it): tool calls and JSON schemas on the real
Qwen2.5-Coder-0.5B-Instruct, greedy, through the strict SDK — the requests of issue 20.

Qwen's `<tool_call>`/`</tool_call>` are single added tokens: a forced call must be generated as
those tokens and come back as `tool_calls`, streamed and not. Asked about Paris with no system
prompt, this model writes the call in a ```json fence instead of its tags; under `auto` that
still comes back as a call. A schema with a free number must close within 100 tokens.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from engines.weights.embedded import QWEN_CODER
from tests.helpers import WEATHER, sdk_client

pytestmark = pytest.mark.optin

SF = [{"role": "user", "content": "What's the weather like in San Francisco?"}]
FORCED: list[Any] = ["required", {"type": "function", "function": {"name": "get_weather"}}]


@pytest.mark.parametrize("tool_choice", FORCED, ids=["required", "named"])
def test_forced_call_comes_back_as_tool_calls(coder_url: str, tool_choice: Any) -> None:
    completion = sdk_client(coder_url).chat.completions.create(
        model=QWEN_CODER.name,
        messages=SF,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice=tool_choice,
        temperature=0,
        max_tokens=64,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert not choice.message.content
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "san francisco" in json.loads(call.function.arguments)["city"].lower()  # type: ignore[union-attr]


@pytest.mark.parametrize("tool_choice", FORCED, ids=["required", "named"])
def test_forced_call_streams_as_tool_call_deltas(coder_url: str, tool_choice: Any) -> None:
    stream = sdk_client(coder_url).chat.completions.create(
        model=QWEN_CODER.name,
        messages=SF,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice=tool_choice,
        temperature=0,
        max_tokens=64,
        stream=True,
    )
    content, names, arguments, reasons = "", [], "", []
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names.append(call.function.name)
                arguments += (call.function.arguments or "") if call.function else ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert content == "" and names == ["get_weather"] and reasons == ["tool_calls"]
    assert "san francisco" in json.loads(arguments)["city"].lower()


def test_untagged_paris_call_under_auto(coder_url: str) -> None:
    completion = sdk_client(coder_url).chat.completions.create(
        model=QWEN_CODER.name,
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
        temperature=0,
        max_tokens=64,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


def test_paris_schema_closes_within_100_tokens(coder_url: str) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "country": {"type": "string"},
            "population_millions": {"type": "number"},
        },
        "required": ["name", "country", "population_millions"],
        "additionalProperties": False,
    }
    completion = sdk_client(coder_url).chat.completions.create(
        model=QWEN_CODER.name,
        messages=[{"role": "user", "content": "Give me data about Paris."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
        temperature=0,
        max_tokens=100,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    document = json.loads(choice.message.content or "")
    assert set(document) == {"name", "country", "population_millions"}
    assert isinstance(document["population_millions"], int | float)
    assert "paris" in document["name"].lower()

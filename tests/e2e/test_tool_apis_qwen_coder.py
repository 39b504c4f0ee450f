"""Opt-in (MLXD_OPTIN=1): tool calling on the real Qwen2.5-Coder-0.5B-Instruct, greedy, through
the strict `openai` and `anthropic` SDKs, on every API that offers the feature — chat
completions, Responses and Messages.

- A tool whose parameters are typed `["object", "null"]` (what schema generators write for an
  optional model) is a tool taking an object: its forced call comes back as a call (Ollama's
  /api/chat, which forces none, calls it too).
- Asked for one call (`parallel_tool_calls: false`; Messages: `disable_parallel_tool_use`) with
  no grammar to hold it to one, the model that would call twice stops after its first call:
  one call, finished as a call, and fewer output tokens than the two calls took.
- A forced call cut by the output limit before its name is whole is no text holding its markup:
  where the request named the function, it is that call with its arguments cut (empty), as
  OpenAI's API answers; with several functions possible, nothing. The finish says the limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from anthropic import Anthropic

from engines.weights.embedded import QWEN_CODER
from tests.helpers import WEATHER, sdk_client

pytestmark = pytest.mark.optin

MODEL = QWEN_CODER.name
SF = "What's the weather like in San Francisco?"
SF_MESSAGES: Any = [{"role": "user", "content": SF}]
PARAMETERS: Any = WEATHER["function"]["parameters"]  # type: ignore[index]
# A turn where the model called twice before, then a question it answers with two calls (asked
# plainly, this model calls once). The same turns as each API writes them.
EARLIER = "What's the weather in Rome and in Oslo?"
SUNNY = "It is sunny in Rome and Oslo."
ASKED = "Please look up the weather in Paris and in London with the tool."
TWO_CITIES: Any = [
    {"role": "user", "content": EARLIER},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"c{i}",
                "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
            }
            for i, city in enumerate(["Rome", "Oslo"])
        ],
    },
    *({"role": "tool", "tool_call_id": f"c{i}", "content": "Sunny"} for i in range(2)),
    {"role": "assistant", "content": SUNNY},
    {"role": "user", "content": ASKED},
]
TWO_CITIES_INPUT: Any = [
    {"role": "user", "content": EARLIER},
    *(
        {
            "type": "function_call",
            "call_id": f"c{i}",
            "name": "get_weather",
            "arguments": json.dumps({"city": city}),
        }
        for i, city in enumerate(["Rome", "Oslo"])
    ),
    *({"type": "function_call_output", "call_id": f"c{i}", "output": "Sunny"} for i in range(2)),
    {"role": "assistant", "content": SUNNY},
    {"role": "user", "content": ASKED},
]
TWO_CITIES_MESSAGES: Any = [
    {"role": "user", "content": EARLIER},
    {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": f"c{i}", "name": "get_weather", "input": {"city": city}}
            for i, city in enumerate(["Rome", "Oslo"])
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": f"c{i}", "content": "Sunny"} for i in range(2)
        ],
    },
    {"role": "assistant", "content": SUNNY},
    {"role": "user", "content": ASKED},
]
TIME: Any = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}
CUT = 3  # tokens: `<tool_call>`, a newline, `{"`: the call's name not begun
GREEDY = {"temperature": 0}  # the anthropic SDK has no temperature argument
NULLABLE_PARAMETERS = {**PARAMETERS, "type": ["object", "null"]}
NULLABLE_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": NULLABLE_PARAMETERS},
}


@pytest.fixture
def claude(coder_url: str) -> Iterator[Anthropic]:
    with Anthropic(
        base_url=coder_url, api_key="unused", _strict_response_validation=True, max_retries=0
    ) as client:
        yield client


def test_chat_forces_a_call_of_a_nullable_object_schema(coder_url: str) -> None:
    completion = sdk_client(coder_url).chat.completions.create(
        model=MODEL,
        messages=SF_MESSAGES,
        tools=[NULLABLE_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=64,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    [call] = choice.message.tool_calls or []
    assert "san francisco" in json.loads(call.function.arguments)["city"].lower()  # type: ignore[union-attr]


def test_responses_forces_a_call_of_a_nullable_object_schema(coder_url: str) -> None:
    tool: Any = {"type": "function", "name": "get_weather", "parameters": NULLABLE_PARAMETERS}
    response = sdk_client(coder_url).responses.create(
        model=MODEL,
        input=SF,
        tools=[tool],
        tool_choice="required",
        temperature=0,
        max_output_tokens=64,
    )
    [call] = [item for item in response.output if item.type == "function_call"]
    assert response.status == "completed"
    assert "san francisco" in json.loads(call.arguments)["city"].lower()


def test_messages_forces_a_call_of_a_nullable_object_schema(claude: Anthropic) -> None:
    tool: Any = {"name": "get_weather", "input_schema": NULLABLE_PARAMETERS}
    message = claude.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=SF_MESSAGES,
        tools=[tool],
        tool_choice={"type": "any"},
        extra_body=GREEDY,
    )
    assert message.stop_reason == "tool_use"
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert "san francisco" in str(call.input["city"]).lower()


def test_ollama_calls_a_tool_of_a_nullable_object_schema(coder_url: str) -> None:
    """Over plain HTTP: the `ollama` client refuses such a schema itself."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
        "tools": [NULLABLE_TOOL],
        "stream": False,
        "options": {"temperature": 0, "num_predict": 64},
    }
    response = httpx.post(f"{coder_url}/api/chat", json=body, timeout=300)
    assert response.status_code == 200, response.text
    [call] = response.json()["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}


def test_chat_stops_after_the_first_call_when_one_is_wanted(coder_url: str) -> None:
    client = sdk_client(coder_url)
    fields: Any = {"model": MODEL, "messages": TWO_CITIES, "tools": [WEATHER], "temperature": 0}
    both = client.chat.completions.create(**fields, max_tokens=100)
    assert len(both.choices[0].message.tool_calls or []) == 2, "the model calls twice"
    one = client.chat.completions.create(**fields, max_tokens=100, parallel_tool_calls=False)
    [call] = one.choices[0].message.tool_calls or []
    assert one.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert one.usage and both.usage
    assert one.usage.completion_tokens < both.usage.completion_tokens
    stream = client.chat.completions.create(
        **fields,
        max_tokens=100,
        parallel_tool_calls=False,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    choices = [choice for chunk in chunks for choice in chunk.choices]
    assert {call.index for choice in choices for call in choice.delta.tool_calls or []} == {0}
    assert [choice.finish_reason for choice in choices if choice.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == one.usage.completion_tokens


def test_responses_stops_after_the_first_call_when_one_is_wanted(coder_url: str) -> None:
    client = sdk_client(coder_url)
    tool: Any = {"type": "function", "name": "get_weather", "parameters": PARAMETERS}
    fields: Any = {"model": MODEL, "input": TWO_CITIES_INPUT, "tools": [tool], "temperature": 0}
    both = client.responses.create(**fields, max_output_tokens=100)
    assert [item.type for item in both.output] == ["function_call", "function_call"]
    one = client.responses.create(**fields, max_output_tokens=100, parallel_tool_calls=False)
    [call] = one.output
    assert one.status == "completed" and call.type == "function_call"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert one.usage and both.usage and one.usage.output_tokens < both.usage.output_tokens


def test_messages_stops_after_the_first_call_when_one_is_wanted(claude: Anthropic) -> None:
    tool: Any = {"name": "get_weather", "input_schema": PARAMETERS}
    fields: Any = {"model": MODEL, "max_tokens": 100, "messages": TWO_CITIES_MESSAGES}
    fields |= {"tools": [tool], "extra_body": GREEDY}
    both = claude.messages.create(**fields)
    assert [block.type for block in both.content] == ["tool_use", "tool_use"]
    single: Any = {"type": "auto", "disable_parallel_tool_use": True}
    one = claude.messages.create(**fields, tool_choice=single)
    [call] = one.content
    assert one.stop_reason == "tool_use" and call.type == "tool_use"
    assert call.input == {"city": "Paris"}
    assert one.usage.output_tokens < both.usage.output_tokens
    with claude.messages.stream(**fields, tool_choice=single) as stream:
        streamed = stream.get_final_message()
    [streamed_call] = streamed.content
    assert streamed_call.type == "tool_use" and streamed_call.input == call.input
    assert (streamed.stop_reason, streamed.usage.output_tokens) == (
        "tool_use",
        one.usage.output_tokens,
    )


@pytest.mark.parametrize(
    ("tools", "tool_choice", "names"),
    [([WEATHER], NAMED, ["get_weather"]), ([WEATHER, TIME], "required", [])],
    ids=["named", "required"],
)
def test_chat_returns_a_forced_call_cut_before_its_name_as_a_cut_call(
    coder_url: str, tools: Any, tool_choice: Any, names: list[str]
) -> None:
    client = sdk_client(coder_url)
    fields: Any = {"model": MODEL, "messages": SF_MESSAGES, "tools": tools}
    fields |= {"tool_choice": tool_choice, "temperature": 0, "max_tokens": CUT}
    choice = client.chat.completions.create(**fields).choices[0]
    assert choice.finish_reason == "length" and not choice.message.content, choice.message
    calls = choice.message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        (name, "") for name in names
    ]
    content, streamed, reasons = "", [], []
    for chunk in client.chat.completions.create(**fields, stream=True):
        for delta_choice in chunk.choices:
            content += delta_choice.delta.content or ""
            for call in delta_choice.delta.tool_calls or []:
                streamed += [call.function.name] if call.function and call.function.name else []
            reasons += [delta_choice.finish_reason] if delta_choice.finish_reason else []
    assert (content, streamed, reasons) == ("", names, ["length"])


def test_responses_returns_a_forced_call_cut_before_its_name_as_an_incomplete_call(
    coder_url: str,
) -> None:
    tool: Any = {"type": "function", "name": "get_weather", "parameters": PARAMETERS}
    response = sdk_client(coder_url).responses.create(
        model=MODEL,
        input=SF,
        tools=[tool],
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
        max_output_tokens=CUT,
    )
    assert response.status == "incomplete" and response.incomplete_details
    assert response.incomplete_details.reason == "max_output_tokens"
    [call] = response.output
    assert call.type == "function_call" and call.status == "incomplete"
    assert (call.name, call.arguments) == ("get_weather", "")


@pytest.mark.parametrize(
    ("tools", "tool_choice", "names"),
    [
        (
            [{"name": "get_weather", "input_schema": PARAMETERS}],
            {"type": "tool", "name": "get_weather"},
            ["get_weather"],
        ),
        (
            [
                {"name": "get_weather", "input_schema": PARAMETERS},
                {"name": "get_time", "input_schema": {"type": "object"}},
            ],
            {"type": "any"},
            [],
        ),
    ],
    ids=["tool", "any"],
)
def test_messages_returns_a_forced_call_cut_before_its_name_as_a_cut_tool_use(
    claude: Anthropic, tools: Any, tool_choice: Any, names: list[str]
) -> None:
    fields: Any = {"model": MODEL, "max_tokens": CUT, "messages": SF_MESSAGES, "tools": tools}
    fields |= {"tool_choice": tool_choice, "extra_body": GREEDY}
    message = claude.messages.create(**fields)
    assert message.stop_reason == "max_tokens"
    assert [(b.type, getattr(b, "name", None)) for b in message.content] == [
        ("tool_use", name) for name in names
    ]
    with claude.messages.stream(**fields) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "max_tokens"
    assert [(b.type, getattr(b, "name", None)) for b in streamed.content] == [
        ("tool_use", name) for name in names
    ]

"""Anthropic's Messages API on the embedded SmolLM2, over a real socket, through the official
`anthropic` SDK in strict mode: create, the stream helper, a tool round trip, count_tokens.

SmolLM2's template has no tool support: the generic tool prompt describes the tools, and a
forced `tool_choice` is enforced by the grammar, so the call's shape is guaranteed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from anthropic import Anthropic

from tests.helpers import LiveServer

MODEL = "smollm2-135m-instruct"
GREEDY = {"temperature": 0}  # the SDK has no temperature argument
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


@pytest.fixture
def claude(live: LiveServer) -> Iterator[Anthropic]:
    with Anthropic(
        base_url=live.url, api_key="unused", _strict_response_validation=True, max_retries=0
    ) as client:
        yield client


def test_create_answers(claude: Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=40,
        system="You are a helpful assistant.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        extra_body=GREEDY,
    )
    assert message.content[0].type == "text"
    assert "paris" in message.content[0].text.lower()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 40


def test_stream_helper_assembles_the_same_answer(claude: Anthropic) -> None:
    question = [{"role": "user", "content": "Name three colours."}]
    message = claude.messages.create(
        model=MODEL,
        max_tokens=30,
        messages=question,  # type: ignore[arg-type]
        extra_body=GREEDY,
    )
    with claude.messages.stream(
        model=MODEL,
        max_tokens=30,
        messages=question,  # type: ignore[arg-type]
        extra_body=GREEDY,
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    text = "".join(event.text for event in events if event.type == "text")
    assert text == final.content[0].text == message.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == message.stop_reason
    assert final.usage.output_tokens == message.usage.output_tokens
    # The second request shares the first one's prompt: served from the prefix cache, which
    # message_start already says (clients such as LangChain read the input side there).
    assert (final.usage.cache_read_input_tokens or 0) > 0
    start = events[0]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == final.usage.input_tokens
    assert start.message.usage.cache_read_input_tokens == final.usage.cache_read_input_tokens


def test_stop_sequences_end_the_answer(claude: Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=60,
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        stop_sequences=["5"],
        extra_body=GREEDY,
    )
    assert "5" not in message.content[0].text  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "5")


def test_a_tool_round_trip(claude: Anthropic) -> None:
    called = claude.messages.create(
        model=MODEL,
        max_tokens=60,
        messages=[QUESTION],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    )
    assert called.stop_reason == "tool_use"
    call = next(block for block in called.content if block.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input.get("city"), str)
    answer = claude.messages.create(
        model=MODEL,
        max_tokens=40,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            QUESTION,  # type: ignore[list-item]
            {"role": "assistant", "content": called.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 22 C"}
                ],
            },
        ],
        extra_body=GREEDY,
    )
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.content  # the tiny model's words may vary; the protocol must hold


def test_streamed_forced_tool_call(claude: Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=60,
        messages=[QUESTION],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        extra_body=GREEDY,
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = next(block for block in final.content if block.type == "tool_use")
    assert call.name == "get_weather" and "city" in call.input


def test_count_tokens_matches_usage(claude: Anthropic) -> None:
    messages = [{"role": "user", "content": "foo"}]
    counted = claude.messages.count_tokens(model=MODEL, messages=messages)  # type: ignore[arg-type]
    message = claude.messages.create(
        model=MODEL,
        max_tokens=5,
        messages=messages,  # type: ignore[arg-type]
        extra_body=GREEDY,
    )
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)

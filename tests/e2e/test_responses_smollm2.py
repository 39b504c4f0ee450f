"""The Responses API on the embedded SmolLM2, through the official SDK in strict mode:
`responses.create`, the `responses.stream` helper, a tool round trip (a forced call, then its
output sent back), and a stored conversation continued by `previous_response_id` whose follow-up
reuses the prefix cache."""

from __future__ import annotations

import json

from tests.helpers import LiveServer

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_create_answers(live: LiveServer) -> None:
    response = live.client().responses.create(
        model=MODEL,
        instructions="Answer in one short sentence.",
        input="What is the capital of France?",
        temperature=0,
        max_output_tokens=40,
        store=False,
    )
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.usage is not None
    assert response.usage.input_tokens > 10
    assert 0 < response.usage.output_tokens <= 40


def test_stream_helper_matches_the_final_response(live: LiveServer) -> None:
    with live.client().responses.stream(
        model=MODEL,
        instructions="Answer with one word.",
        input="Say hello.",
        temperature=0,
        max_output_tokens=100,
        store=False,
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()  # needs `response.completed`
    assert "".join(deltas) == final.output_text
    assert final.output_text.strip()
    assert final.status == "completed"


def test_stream_cut_by_max_output_tokens_ends_incomplete(live: LiveServer) -> None:
    with live.client().responses.stream(
        model=MODEL, input="Count to one hundred.", temperature=0, max_output_tokens=8, store=False
    ) as stream:
        events = list(stream)
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == "".join(deltas)
    assert last.response.usage is not None and last.response.usage.output_tokens == 8


def test_tool_round_trip(live: LiveServer) -> None:
    client = live.client()
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.responses.create(
        model=MODEL,
        input=[question],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
        max_output_tokens=60,
        store=False,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls, first.output
    call = calls[0]
    assert call.name == "get_weather"
    assert isinstance(json.loads(call.arguments).get("city"), str)
    second = client.responses.create(
        model=MODEL,
        input=[
            question,
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id,
             "output": "Sunny, 21 degrees C"},
        ],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        temperature=0,
        max_output_tokens=40,
        store=False,
    )  # fmt: skip
    assert second.status in ("completed", "incomplete")
    assert second.output, second


def test_previous_response_id_continues_and_reuses_the_cache(live: LiveServer) -> None:
    client = live.client()
    first = client.responses.create(
        model=MODEL,
        input="Name a color.",
        temperature=0,
        max_output_tokens=12,
    )
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(
        model=MODEL,
        input="Name another one.",
        previous_response_id=first.id,
        temperature=0,
        max_output_tokens=12,
    )
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    # the follow-up's prompt starts with the whole first turn, which the prefix cache holds
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens // 2
    fetched = client.responses.retrieve(second.id)
    assert fetched.output_text == second.output_text
    client.responses.delete(first.id)
    client.responses.delete(second.id)

"""`item_reference` input items on `/v1/responses` (spec `ItemReferenceParam`), through the strict
OpenAI SDK and raw HTTP: a stored item named by its id stands where the reference is, in the
prompt, in the stored conversation and in the token count; unknown ids are a 404 naming them.

The shape is the Vercel AI SDK's (`@ai-sdk/openai` 3.0.141, `openai.responses(...)` with store on,
its default): each later turn resends the user messages and names the assistant's earlier
messages by their `msg_` ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import assert_openai_error
from tests.unit.test_responses_contract import CALL, URL, WEATHER, prompt_of


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(context_length=4096)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, max_body_bytes=1 << 20)


async def test_a_referenced_assistant_message_is_in_the_prompt(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    first = await client.responses.create(model="fake", input="My name is Ada.")
    [message] = first.output
    body: dict[str, Any] = {
        "model": "fake",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]},
            {"type": "item_reference", "id": message.id},
            {"role": "user", "content": [{"type": "input_text", "text": "My name?"}]},
        ],
    }
    counted = await client.responses.input_tokens.count(**body)
    second = await client.responses.create(**body)
    assert prompt_of(fake_engine) == "<user>My name is Ada.<assistant>Hello there!<user>My name?"
    assert second.usage is not None
    assert counted.input_tokens == second.usage.input_tokens
    listed = (await client.responses.input_items.list(second.id, order="asc")).data
    assert listed[1].id == message.id and listed[1].type == "message"
    assert listed[1].role == "assistant" and listed[1].content[0].text == "Hello there!"  # type: ignore[union-attr]


async def test_references_to_calls_inputs_and_typeless_references(
    client: AsyncOpenAI, fake_engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `function_call` and a user message of an earlier response's input, the second as a
    reference without `type` (the spec lets it be left out)."""
    rendered: list[list[dict[str, Any]]] = []
    encode_chat = fake_engine.encode_chat

    def recorded(messages: list[dict[str, Any]], *args: Any) -> list[int]:
        rendered.append(messages)
        return encode_chat(messages, *args)

    monkeypatch.setattr(fake_engine, "encode_chat", recorded)
    fake_engine.reply = CALL
    first = await client.responses.create(
        model="fake",
        input="Weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
    )
    [call] = first.output
    assert call.type == "function_call"
    [asked] = (await client.responses.input_items.list(first.id)).data
    fake_engine.reply = "Sunny."
    await client.responses.create(
        model="fake",
        tools=[WEATHER],  # type: ignore[list-item]
        input=[
            {"id": asked.id},  # type: ignore[list-item]
            {"type": "item_reference", "id": call.id},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    asked_message, call_message, result = rendered[-1]
    assert asked_message == {"role": "user", "content": "Weather in Paris?"}
    [chat_call] = call_message["tool_calls"]
    assert chat_call["id"] == call.call_id and chat_call["function"]["name"] == "get_weather"
    assert json.loads(chat_call["function"]["arguments"]) == {"city": "Paris"}
    assert result["role"] == "tool" and result["content"] == "sunny"


async def test_an_unknown_or_unstored_reference_is_a_404(http: httpx.AsyncClient) -> None:
    def body(item_id: object) -> dict[str, Any]:
        return {
            "model": "fake",
            "input": [{"role": "user", "content": "hi"}, {"type": "item_reference", "id": item_id}],
        }

    error = assert_openai_error(await http.post(URL, json=body("msg_nope")), 404, "input[1].id")
    assert "msg_nope" in error["message"]
    unstored = (await http.post(URL, json={"model": "fake", "input": "hi", "store": False})).json()
    response = await http.post(URL, json=body(unstored["output"][0]["id"]))
    assert_openai_error(response, 404, "input[1].id")
    response = await http.post(f"{URL}/input_tokens", json=body("msg_nope"))
    assert_openai_error(response, 404, "input[1].id")
    assert_openai_error(await http.post(URL, json=body(5)), 400, "input[1].id")
    assert_openai_error(await http.post(URL, json=body("")), 400, "input[1].id")

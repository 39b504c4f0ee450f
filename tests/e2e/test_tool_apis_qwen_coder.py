"""Opt-in (MLXD_OPTIN=1): tool calling on the real Qwen2.5-Coder-0.5B-Instruct, greedy, through
the strict `openai` and `anthropic` SDKs, on every API that offers the feature — chat
completions, Responses and Messages.

- A tool whose parameters are typed `["object", "null"]` (what schema generators write for an
  optional model) is a tool taking an object: its forced call comes back as a call (Ollama's
  /api/chat, which forces none, calls it too).
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

"""`response_format` beside tools the model may call (`tool_choice` absent or "auto"): the
output grammar lets the model call a tool or answer in the schema, as OpenAI's API does (agent
frameworks send an output schema with their tools); without tools, or with `tool_choice`
"none", it is the schema alone."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fakes import FakeEngine
from tests.helpers import assert_openai_error

URL = "/v1/chat/completions"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}


def body(**fields: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "weather?"}]
    return {"model": "fake", "max_tokens": 4, "messages": messages, **fields}


@pytest.mark.parametrize("tool_choice", [None, "auto"])
async def test_tools_beside_a_schema_may_be_called(
    http: httpx.AsyncClient, fake_engine: FakeEngine, tool_choice: str | None
) -> None:
    extra = {} if tool_choice is None else {"tool_choice": tool_choice}
    response = await http.post(URL, json=body(tools=TOOLS, response_format=FORMAT, **extra))
    assert response.status_code == 200, response.text
    grammar = fake_engine.grammars_checked[-1]
    assert "json_answer" in grammar and "get_weather" in grammar and "summary" in grammar


@pytest.mark.parametrize("fields", [{}, {"tools": TOOLS, "tool_choice": "none"}])
async def test_without_callable_tools_the_schema_stands_alone(
    http: httpx.AsyncClient, fake_engine: FakeEngine, fields: dict[str, Any]
) -> None:
    response = await http.post(URL, json=body(response_format=FORMAT, **fields))
    assert response.status_code == 200, response.text
    grammar = fake_engine.grammars_checked[-1]
    assert "summary" in grammar and "json_answer" not in grammar
    assert "get_weather" not in grammar


async def test_tools_the_library_cannot_take_leave_the_schema_alone(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """Not a 400 about tools nobody forced: the JSON answer alone, as before tools could be
    called beside a schema (the fake refuses grammars holding `x-unsupported`)."""
    odd = [{"type": "function", "function": {"name": "odd", "parameters": {"x-unsupported": 1}}}]
    response = await http.post(URL, json=body(tools=odd, response_format=FORMAT))
    assert response.status_code == 200, response.text
    assert "odd" in fake_engine.grammars_checked[-2]  # tried first
    assert "summary" in fake_engine.grammars_checked[-1]
    assert "odd" not in fake_engine.grammars_checked[-1]


async def test_an_answer_schema_the_library_cannot_take_is_still_a_400(
    http: httpx.AsyncClient,
) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"x-unsupported": 1}}}
    response = await http.post(URL, json=body(tools=TOOLS, response_format=bad))
    assert_openai_error(response, 400, param="response_format.json_schema.schema")


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
async def test_a_forced_call_beside_a_schema_is_the_call(
    http: httpx.AsyncClient, fake_engine: FakeEngine, tool_choice: Any
) -> None:
    """As OpenAI's API: the output must be a call, the schema is for an answer (was a 400)."""
    response = await http.post(
        URL, json=body(tools=TOOLS, tool_choice=tool_choice, response_format=FORMAT)
    )
    assert response.status_code == 200, response.text
    grammar = fake_engine.grammars_checked[-1]
    assert "get_weather" in grammar and "summary" not in grammar

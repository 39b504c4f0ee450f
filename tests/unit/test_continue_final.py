"""`continue_final_message` (an extension, as in vLLM; what /v1/messages sets for a prefill): the
prompt ends inside the final assistant message and the reply continues it. On chat it must name
an assistant message with text last; the template sees the flag, and only then."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from engines.llm.templates import CONTINUE_FINAL
from tests.fakes import FakeEngine
from tests.helpers import assert_openai_error

URL = "/v1/chat/completions"
PREFILLED = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Bonjour"}]


def body(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"model": "fake", "max_tokens": 4, "messages": messages, **fields}


async def test_the_template_continues_the_final_assistant_message(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    response = await http.post(URL, json=body(PREFILLED, continue_final_message=True))
    assert response.status_code == 200, response.text
    assert fake_engine.template_kwargs_seen == {CONTINUE_FINAL: True}
    await http.post(URL, json=body(PREFILLED))  # a new assistant turn, as OpenAI's API does
    assert fake_engine.template_kwargs_seen == {}


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
        [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "Calling",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
        ],
    ],
)
async def test_nothing_to_continue_is_a_400(
    http: httpx.AsyncClient, messages: list[dict[str, Any]]
) -> None:
    response = await http.post(URL, json=body(messages, continue_final_message=True))
    error = assert_openai_error(response, 400)
    assert error["message"].startswith("continue_final_message needs the last message")


async def test_a_prefill_with_constrained_output_is_a_400(http: httpx.AsyncClient) -> None:
    """The grammar would start after the prefill, so prefill and reply would not be one JSON."""
    response = await http.post(
        URL,
        json=body(PREFILLED, continue_final_message=True, response_format={"type": "json_object"}),
    )
    error = assert_openai_error(response, 400, param="messages")
    assert "prefill" in error["message"]


async def test_only_the_checked_field_continues_a_message(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    """As a template variable it would end the prompt inside the user's message."""
    kwargs = {CONTINUE_FINAL: True, "enable_thinking": False}
    messages = [{"role": "user", "content": "hi"}]
    response = await http.post(URL, json=body(messages, chat_template_kwargs=kwargs))
    assert response.status_code == 200, response.text
    assert fake_engine.template_kwargs_seen == {"enable_thinking": False}

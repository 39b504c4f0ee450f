"""Whether a chat-shaped route lets the engine lower max_tokens to the room the prompt leaves
(`GenerationRequest.clamp_max_tokens`: a vision engine does where the images' tokens make the
prompt longer than its ids): where none was asked (the room), and on Messages (which clamps)."""

from __future__ import annotations

import httpx
import pytest

from tests.fakes import FakeEngine
from tests.helpers import URL, chat_body


@pytest.mark.parametrize(
    ("path", "fields", "clamps"),
    [
        (URL, {}, True),  # none asked: the rest of the context
        (URL, {"max_tokens": 5}, False),
        ("/v1/responses", {"input": "hi"}, True),
        ("/v1/responses", {"input": "hi", "max_output_tokens": 5}, False),
        ("/v1/messages", {"max_tokens": 32000}, True),  # lowered to the room
        ("/v1/messages", {"max_tokens": 5}, True),  # never refused for being large
    ],
)
async def test_max_tokens_may_be_lowered_where_none_was_asked_or_on_messages(
    http: httpx.AsyncClient, fake_engine: FakeEngine, path: str, fields: dict[str, object],
    clamps: bool,
) -> None:  # fmt: skip
    body = chat_body(**fields) if path == URL else {"model": "fake", **fields}
    headers = {}
    if path == "/v1/messages":
        body["messages"] = [{"role": "user", "content": "hi"}]
        headers["anthropic-version"] = "2023-06-01"
    response = await http.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    request = fake_engine.requests[-1]
    assert request.clamp_max_tokens is clamps
    assert (request.max_tokens == 5) is (5 in fields.values())

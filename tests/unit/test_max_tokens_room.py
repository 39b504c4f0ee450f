"""The max_tokens a chat-shaped route hands the engine, and whether it is the room the prompt
leaves (`GenerationRequest.max_tokens_is_room`: a vision engine lowers such a one where the
images' tokens make the prompt longer than its ids)."""

from __future__ import annotations

import httpx
import pytest

from tests.fakes import FakeEngine
from tests.helpers import URL, chat_body


@pytest.mark.parametrize(
    ("path", "fields", "is_room"),
    [
        (URL, {}, True),  # none asked: the rest of the context
        (URL, {"max_tokens": 5}, False),
        ("/v1/responses", {"input": "hi"}, True),
        ("/v1/responses", {"input": "hi", "max_output_tokens": 5}, False),
        ("/v1/messages", {"max_tokens": 32000}, True),  # lowered to the room
        ("/v1/messages", {"max_tokens": 5}, False),
    ],
)
async def test_the_room_is_marked_where_max_tokens_is_it(
    http: httpx.AsyncClient, fake_engine: FakeEngine, path: str, fields: dict[str, object],
    is_room: bool,
) -> None:  # fmt: skip
    body = chat_body(**fields) if path == URL else {"model": "fake", **fields}
    headers = {}
    if path == "/v1/messages":
        body["messages"] = [{"role": "user", "content": "hi"}]
        headers["anthropic-version"] = "2023-06-01"
    response = await http.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    request = fake_engine.requests[-1]
    assert request.max_tokens_is_room is is_room
    assert (request.max_tokens == 5) is not is_room

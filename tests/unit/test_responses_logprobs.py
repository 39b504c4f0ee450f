"""Output-text logprobs on `/v1/responses` (`include: ["message.output_text.logprobs"]`,
`top_logprobs`), through the strict OpenAI SDK on a scripted engine that gives each character a
token: the message's `output_text.logprobs`, each `response.output_text.delta`'s, streamed and
not alike, and tokens of a call left out.

Clients that ask: the Vercel AI SDK's `openai.responses(...)` with its `logprobs` provider
option, LangChain's `ChatOpenAI({logprobs: true})` on the Responses API; both got `[]`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.fakes import FakeEngine
from tests.unit.test_responses_contract import CALL, URL, WEATHER

LOGPROBS = {"include": ["message.output_text.logprobs"], "top_logprobs": 2}


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(context_length=4096)


async def created_and_streamed(
    client: AsyncOpenAI, **body: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The message's logprobs unstreamed, streamed (the final response's) and the deltas'."""
    created = await client.responses.create(model="fake", input="hi", **body)
    async with client.responses.stream(model="fake", input="hi", **body) as stream:
        deltas = [e async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    unstreamed, streamed = (
        next(item for item in r.output if item.type == "message").content[0]
        for r in (created, final)
    )
    assert unstreamed.type == streamed.type == "output_text"
    delta_logprobs = [lp.model_dump() for d in deltas for lp in d.logprobs]
    return (
        [lp.model_dump() for lp in unstreamed.logprobs or []],
        [lp.model_dump() for lp in streamed.logprobs or []],
        delta_logprobs,
    )


async def test_the_output_texts_logprobs(client: AsyncOpenAI, fake_engine: FakeEngine) -> None:
    unstreamed, streamed, deltas = await created_and_streamed(client, **LOGPROBS)
    assert unstreamed == streamed
    assert "".join(lp["token"] for lp in unstreamed) == "Hello there!"
    first = unstreamed[0]
    assert first["logprob"] == -0.5 and first["bytes"] == list(b"H")
    assert [t["token"] for t in first["top_logprobs"]] == ["x", "y"]
    assert fake_engine.requests[-1].logprobs == 2
    assert [lp["token"] for lp in deltas] == [lp["token"] for lp in unstreamed]
    assert all("bytes" not in t for lp in deltas for t in lp["top_logprobs"])


async def test_a_calls_tokens_are_not_the_texts(
    client: AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    fake_engine.reply = "Sure.\n" + CALL
    unstreamed, streamed, deltas = await created_and_streamed(client, tools=[WEATHER], **LOGPROBS)
    assert unstreamed == streamed
    assert "".join(lp["token"] for lp in unstreamed) == "Sure.\n"  # the message's text
    assert [lp["token"] for lp in deltas] == list("Sure.\n")


async def test_without_include_there_are_none(
    http: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    body = {"model": "fake", "input": "hi", "top_logprobs": 2}
    response = await http.post(URL, json=body)
    assert response.json()["output"][0]["content"][0]["logprobs"] == []
    assert fake_engine.requests[-1].logprobs is None
    assert response.headers["x-mlxd-ignored-fields"] == "top_logprobs"
    response = await http.post(URL, json={**body, **LOGPROBS})
    assert "x-mlxd-ignored-fields" not in response.headers
    response = await http.post(
        URL, json={**body, "top_logprobs": 21, **LOGPROBS} | {"top_logprobs": 21}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "top_logprobs"

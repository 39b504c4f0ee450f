"""A prompt over the model's context, asked in Anthropic's API, is refused with Anthropic's own
wording and counts (`prompt is too long: N tokens > M maximum`; with max_tokens, `input length and
`max_tokens` exceed context limit: N + K > M, ...`), which Claude Code reads to compact a
conversation or to retry with a smaller max_tokens; OpenAI's routes keep OpenAI's wording."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest
from fastapi import FastAPI

from engines.errors import ContextTooLong
from server.errors import anthropic_wording
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import app_client, started_app
from tests.unit.test_messages_contract import assert_anthropic_error, sdk

LONG = [{"role": "user", "content": "x" * 100}]  # the fake's context is 64 tokens (characters)


@pytest.fixture
async def app() -> AsyncIterator[FastAPI]:
    engines = [FakeEngine(context_length=64)]
    async with started_app(Settings(max_body_bytes=1 << 20), engines) as served:
        yield served


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(app) as client:
        yield client


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_says_prompt_is_too_long_with_the_counts(
    http: httpx.AsyncClient, stream: bool
) -> None:
    body = {"model": "fake", "max_tokens": 10, "messages": LONG, "stream": stream}
    response = await http.post("/v1/messages", json=body)
    message = assert_anthropic_error(response, 400, "invalid_request_error")
    match = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", message)
    assert match is not None, message
    assert int(match[1]) > 100 and int(match[2]) == 63  # room for one output token is kept


async def test_a_prompt_that_fills_the_context_is_over_the_maximum(http: httpx.AsyncClient) -> None:
    """A prompt must leave room for one output token, so the largest is the context less one:
    one of exactly the context's length reads `64 tokens > 63 maximum`, not `64 > 64` (no
    excess, for a client that trims the conversation by the difference)."""
    full = [{"role": "user", "content": "x" * (64 - len("<user>"))}]
    response = await http.post(
        "/v1/messages", json={"model": "fake", "max_tokens": 10, "messages": full}
    )
    message = assert_anthropic_error(response, 400, "invalid_request_error")
    assert message == "prompt is too long: 64 tokens > 63 maximum"


async def test_the_strict_sdk_raises_bad_request_with_it(app: FastAPI) -> None:
    async with sdk(app) as client:
        with pytest.raises(anthropic.BadRequestError) as raised:
            await client.messages.create(model="fake", max_tokens=10, messages=LONG)  # type: ignore[arg-type]
    assert "prompt is too long:" in str(raised.value)


async def test_openai_routes_keep_openai_wording(http: httpx.AsyncClient) -> None:
    body = {"model": "fake", "messages": LONG}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 64 tokens" in error["message"]


def test_the_max_tokens_form() -> None:
    error = ContextTooLong("...", "max_tokens", prompt_tokens=60, limit=64, max_tokens=10)
    assert anthropic_wording(error) == (
        "input length and `max_tokens` exceed context limit: 60 + 10 > 64, decrease input "
        "length or `max_tokens` and try again"
    )
    assert anthropic_wording(ContextTooLong("no counts")) is None

"""A Messages stream's `message_start` reports the prompt's usage as Anthropic's does: the prefix
cache's share as `cache_read_input_tokens`, the rest as `input_tokens` — known once the engine
admits the request, so `message_start` waits for that, though never past half a keep-alive
interval (a request still queued then gets the prompt counted as input, and `message_delta`
says what the cache served)."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic import AsyncAnthropic

from server.settings import Settings
from tests.fakes import FakeEngine
from tests.helpers import strict_anthropic
from tests.unit.test_messages_contract import sse_events

CACHED = 5
MESSAGES: Any = [{"role": "user", "content": "the same question again"}]
PROMPT = len("<user>the same question again")  # as the fake engine renders it


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(cached_tokens=CACHED)


async def test_message_start_counts_the_prefix_cache_reads(claude: AsyncAnthropic) -> None:
    stream = await claude.messages.create(
        model="fake", max_tokens=10, messages=MESSAGES, stream=True
    )
    events = [event async for event in stream]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == PROMPT - CACHED
    assert start.message.usage.cache_read_input_tokens == CACHED
    delta = next(event for event in events if event.type == "message_delta")
    assert delta.usage.input_tokens == PROMPT - CACHED
    assert delta.usage.cache_read_input_tokens == CACHED


async def test_the_sdks_final_message_has_the_usage_of_the_whole_reply(
    claude: AsyncAnthropic,
) -> None:
    async with claude.messages.stream(model="fake", max_tokens=10, messages=MESSAGES) as stream:
        streamed = await stream.get_final_message()
    whole = await claude.messages.create(model="fake", max_tokens=10, messages=MESSAGES)
    assert streamed.usage == whole.usage
    assert whole.usage.input_tokens == PROMPT - CACHED
    assert whole.usage.cache_read_input_tokens == CACHED


async def test_a_request_still_queued_gets_message_start_before_any_ping() -> None:
    engine = FakeEngine(cached_tokens=CACHED, queued_s=0.6)
    settings = Settings(max_body_bytes=1 << 20, keepalive_interval_s=0.2)
    async with strict_anthropic(settings, [engine]) as claude:
        response = await claude.messages.with_raw_response.create(
            model="fake", max_tokens=10, messages=MESSAGES, stream=True
        )
        text = (await response.http_response.aread()).decode()
        names = [name for name, _ in sse_events(text)]
        assert names[0] == "message_start" and "ping" in names, names
        async with claude.messages.stream(model="fake", max_tokens=10, messages=MESSAGES) as stream:
            start = await anext(aiter(stream))
            final = await stream.get_final_message()
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == PROMPT  # not admitted yet: all of it
    assert start.message.usage.cache_read_input_tokens == 0
    assert final.usage.input_tokens == PROMPT - CACHED  # message_delta's
    assert final.usage.cache_read_input_tokens == CACHED

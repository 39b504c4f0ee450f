"""Fake-engine apps, reachable in-process (ASGITransport) through the strict OpenAI client, and
the strict Anthropic client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine, FakeSpeechEngine
from tests.helpers import strict_anthropic


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def fake_speech() -> FakeSpeechEngine:
    return FakeSpeechEngine()


@pytest.fixture
def settings() -> Settings:
    return Settings(max_body_bytes=64 * 1024, max_audio_bytes=256 * 1024, max_audio_seconds=60)


@pytest.fixture
async def http(
    fake_engine: FakeEngine, fake_speech: FakeSpeechEngine, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    pool = EnginePool([fake_engine, fake_speech])
    app = create_app(settings, pool)
    await pool.start()  # ASGITransport runs no lifespan
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client
    await pool.drain(timeout=1)


@pytest.fixture
def client(http: httpx.AsyncClient) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url="http://127.0.0.1/v1",
        api_key="unused",
        http_client=http,
        _strict_response_validation=True,
        max_retries=0,
    )


@pytest.fixture
def loose_client(http: httpx.AsyncClient) -> AsyncOpenAI:
    """The SDK without strict validation: for streamed /v1/completions, whose chunks carry
    `finish_reason: null` as OpenAI's API sends them, which the SDK's `Completion` type forbids."""
    return AsyncOpenAI(
        base_url="http://127.0.0.1/v1", api_key="unused", http_client=http, max_retries=0
    )


@pytest.fixture
async def claude(fake_engine: FakeEngine) -> AsyncIterator[AsyncAnthropic]:
    """The strict `anthropic` SDK (its own HTTP library, httpx2) on an app of `fake_engine`."""
    async with strict_anthropic(Settings(max_body_bytes=1 << 20), [fake_engine]) as client:
        yield client

"""Fake-engine apps, reachable in-process (ASGITransport) through the strict OpenAI client, and
the strict Anthropic client; a tiny random model served by the hub stand-in as `org/tiny`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine, FakeSpeechEngine
from tests.helpers import strict_anthropic
from tests.hub_fixture import TINY_REPO, FakeHub, FakeRepo, serving_hub
from tests.tiny import save_model_dir, tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama as mlx-lm saves one, built once per module."""
    return save_model_dir(tiny_model(), "llama", tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_hub(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The stand-in serving the tiny model as `TINY_REPO`, named by HF_ENDPOINT, with
    HF_HUB_CACHE in tmp_path."""
    with serving_hub({TINY_REPO: FakeRepo.from_dir(tiny_dir)}, tmp_path, monkeypatch) as fake:
        yield fake


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

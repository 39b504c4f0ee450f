"""Helpers shared by test modules (test modules never import each other): HTTP error checks and
request bodies for the contract tests, the strict SDK client and the live server of the
end-to-end tests, and running requests on a real engine thread against mlx-lm."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import mlx.core as mx
from anthropic import AsyncAnthropic
from fastapi import FastAPI
from mlx_lm.models.cache import make_prompt_cache
from openai import OpenAI

from engines.kinds import Engine
from engines.llm.engine import LLMEngine
from engines.pool import EnginePool
from engines.types import FinishEvent, GenerationRequest, TokenEvent

# -- HTTP contract tests (scripted fake engines) ---------------------------------------------

URL = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": HELLO, **fields}


def assert_openai_error(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


# -- end-to-end tests (real models, the official SDK in strict mode) --------------------------

OPEN_CLIENTS: list[OpenAI] = []  # closed after each test by tests/e2e/conftest.py


def sdk_client(url: str, **kwargs: object) -> OpenAI:
    """The official SDK in strict mode against `url`; closed after the test that made it."""
    options: dict[str, object] = {"_strict_response_validation": True, "max_retries": 0}
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", **{**options, **kwargs})  # type: ignore[arg-type]
    OPEN_CLIENTS.append(client)
    return client


@dataclass
class LiveServer:
    url: str
    pool: EnginePool

    def client(self, **kwargs: object) -> OpenAI:
        return sdk_client(self.url, **kwargs)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# -- engine tests (tiny random models on their real engine thread) ----------------------------

PROMPT = [5, 80, 120, 33, 200, 7, 90, 150, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72]


def prompt(i: int) -> list[int]:
    return [(7 * i + j) % 250 + 6 for j in range(10 + i)]


async def run(engine: LLMEngine, request: GenerationRequest) -> tuple[str, list[int], FinishEvent]:
    text, tokens = "", []
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent):
            text += event.text
            tokens += event.token_ids
        elif isinstance(event, FinishEvent):
            return text, tokens, event
        else:
            raise AssertionError(f"unexpected {event}")
    raise AssertionError("stream ended without a finish event")


def reference_greedy(engine: LLMEngine, count: int) -> list[int]:
    """Greedy tokens computed directly with mlx-lm, on a thread of our own with its own stream."""
    result: list[int] = []

    def work() -> None:
        from engines.weights.checkpoint import load_checkpoint

        with mx.stream(mx.new_stream(mx.cpu)):
            model, _ = load_checkpoint(engine.path)
            cache = make_prompt_cache(model)
            logits = model(mx.array([PROMPT]), cache=cache)
            for _ in range(count):
                token = int(mx.argmax(logits[0, -1]).item())
                result.append(token)
                logits = model(mx.array([[token]]), cache=cache)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return result


@asynccontextmanager
async def started_app(settings: Any, engines: Sequence[Engine]) -> AsyncIterator[FastAPI]:
    """An app serving `engines`, its pool started (ASGITransport runs no lifespan) and drained
    after."""
    from server.app import create_app

    pool = EnginePool(list(engines))
    app = create_app(settings, pool)
    await pool.start()
    yield app
    await pool.drain(timeout=1)


@asynccontextmanager
async def app_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of `app` in process (no socket)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


@asynccontextmanager
async def asgi_client(settings: Any, engines: Sequence[Engine]) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of an app serving `engines` in process (`started_app`)."""
    async with started_app(settings, engines) as app, app_client(app) as client:
        yield client


@asynccontextmanager
async def strict_anthropic(
    settings: Any, engines: Sequence[Engine]
) -> AsyncIterator[AsyncAnthropic]:
    """The strict `anthropic` SDK (its own HTTP library, httpx2) on an app of `engines`, in
    process (`started_app`)."""
    async with started_app(settings, engines) as app:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield AsyncAnthropic(
                base_url="http://127.0.0.1",
                api_key="unused",
                http_client=http,
                _strict_response_validation=True,
                max_retries=0,
            )


async def responses_events(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A streamed `/v1/responses` request's events (comments skipped), each checked to come
    with an `event:` line naming its type."""
    async with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line and line[0] != ":"]
    events = []
    for name, data in zip(lines[::2], lines[1::2], strict=True):
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    return events


def late_over_early_cost(new_feed: Callable[[], Callable[[str], object]], text: str) -> float:
    """How much a parser's last 5,000 four-character pieces of `text` cost over its first
    5,000 (after 100 warm ones), best of three fresh parsers (`new_feed` makes one and returns
    its feed): ~1 where each piece is read once, far more where a piece rereads what came
    before."""
    pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    ratios = []
    for _ in range(3):
        feed = new_feed()
        took = []
        for piece in pieces:
            started = time.perf_counter()
            feed(piece)
            took.append(time.perf_counter() - started)
        ratios.append(sum(took[-5000:]) / sum(took[100:5100]))
    return min(ratios)

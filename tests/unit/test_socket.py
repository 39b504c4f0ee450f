"""Streaming, slow readers and client disconnects over a real socket (uvicorn on 127.0.0.1:0)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from engines.pool import EnginePool
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.servers import serve, wait_until


@pytest.fixture
def slow_server() -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine(reply="word " * 200, token_delay_s=0.01, context_length=4096)
    with serve(create_app(Settings(), EnginePool([engine]))) as url:
        yield url, engine


def body(stream: bool) -> dict[str, object]:
    return {
        "model": "fake",
        "messages": [{"role": "user", "content": "go"}],
        "stream": stream,
        "max_tokens": 1000,
    }


async def test_streamed_client_disconnect_cancels(slow_server: tuple[str, FakeEngine]) -> None:
    url, engine = slow_server
    async with (
        httpx.AsyncClient(base_url=url) as http,
        http.stream("POST", "/v1/chat/completions", json=body(True)) as response,
    ):
        assert response.status_code == 200
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                seen += 1
            if seen >= 3:
                break  # leaving the block closes the connection mid-stream
    assert await wait_until(lambda: engine.active == 0, timeout=2)
    assert engine.tokens_generated < 1000


async def test_non_streamed_client_disconnect_cancels(slow_server: tuple[str, FakeEngine]) -> None:
    url, engine = slow_server
    async with httpx.AsyncClient(base_url=url, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/chat/completions", json=body(False))
    assert await wait_until(lambda: engine.active == 0, timeout=2)
    assert 0 < engine.tokens_generated < 1000


async def test_slow_reader_loses_nothing() -> None:
    engine = FakeEngine(reply="wörd✓ " * 300, token_delay_s=0.0005, context_length=4096)
    text = ""
    with serve(create_app(Settings(), EnginePool([engine]))) as url:
        async with (
            httpx.AsyncClient(base_url=url) as http,
            http.stream("POST", "/v1/chat/completions", json=body(True)) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    if not text:
                        await asyncio.sleep(0.5)  # stall while the engine runs ahead
                    delta = json.loads(line.removeprefix("data: "))["choices"][0]["delta"]
                    text += delta.get("content", "")
    assert text == engine.reply[:1000]


async def test_keepalive_comments_while_the_prompt_is_processed() -> None:
    engine = FakeEngine(reply="ok", prefill_delay_s=0.6, context_length=4096)
    settings = Settings(keepalive_interval_s=0.1)
    lines: list[str] = []
    with serve(create_app(settings, EnginePool([engine]))) as url:
        async with (
            httpx.AsyncClient(base_url=url) as http,
            http.stream("POST", "/v1/chat/completions", json=body(True)) as response,
        ):
            lines = [line async for line in response.aiter_lines() if line]
    first_content = next(i for i, line in enumerate(lines) if '"content":"o' in line)
    keepalives = [i for i, line in enumerate(lines) if line.startswith(": keep-alive")]
    assert len([i for i in keepalives if i < first_content]) >= 3
    # [DONE] is the last line: no keep-alive after it (`sse.Last`), however loaded the machine.
    assert lines[-1] == "data: [DONE]"


async def test_oversized_headers_over_a_socket_are_an_openai_431() -> None:
    with serve(create_app(Settings(), EnginePool([FakeEngine()]))) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            response = await http.get("/v1/models", headers={"x-filler": "a" * 40_000})
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "headers_too_large"


async def test_requests_over_the_connection_limit_get_a_503_in_their_apis_shape() -> None:
    engine = FakeEngine(reply="word " * 100, token_delay_s=0.01, context_length=4096)
    with serve(create_app(Settings(max_connections=2), EnginePool([engine]))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            async with (
                http.stream("POST", "/v1/chat/completions", json=body(True)) as first,
                http.stream("POST", "/v1/chat/completions", json=body(True)) as second,
            ):
                assert first.status_code == second.status_code == 200
                refused = await http.get("/v1/models")
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["code"] == "server_busy"
                # In the API's own shape on its routes.
                anthropic = await http.post("/v1/messages", json={})
                assert anthropic.status_code == 503
                assert anthropic.json()["error"]["type"] == "overloaded_error"
                assert (await http.get("/api/tags")).json() == {
                    "error": refused.json()["error"]["message"]
                }
            assert await wait_until(lambda: engine.active == 0, timeout=5)
            assert (await http.get("/v1/models")).status_code == 200

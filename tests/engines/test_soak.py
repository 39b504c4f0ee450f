"""64 concurrent streaming clients on the real engine (tiny model) over a real socket, half of
them disconnecting mid-stream: the rest all complete, nothing is a 5xx, the engine ends idle."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from engines.llm.engine import LLMEngine
from engines.pool import EnginePool
from engines.types import ChatLimits
from server.app import create_app
from server.settings import Settings
from tests.servers import serve, wait_until

CLIENTS = 64


async def client(url: str, number: int) -> tuple[int, str, int]:
    """(status, how it ended, content chunks seen); odd-numbered clients leave early."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"client {number} says hello"}],
        "max_tokens": 40,
        "temperature": 0.7,
        "seed": number,
        "stream": True,
    }
    chunks = 0
    async with (
        httpx.AsyncClient(base_url=url, timeout=120) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        if response.status_code != 200:
            return response.status_code, (await response.aread()).decode(), chunks
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                return 200, "done", chunks
            if line.startswith("data: {"):
                payload = json.loads(line[6:])
                if "error" in payload:
                    return 200, f"error {payload}", chunks
                chunks += 1
                if number % 2 and chunks >= 3:
                    return 200, "left", chunks
    return 200, "connection ended without [DONE]", chunks


async def test_64_clients_half_leaving(tiny_model_dir: Path) -> None:
    engine = LLMEngine("tiny", tiny_model_dir, limits=ChatLimits(max_batch=32, max_waiting=64))
    app = create_app(Settings(), EnginePool([engine]))
    with serve(app) as url:
        results = await asyncio.gather(*(client(url, i) for i in range(CLIENTS)))
        assert await wait_until(lambda: engine.active == 0 and engine.queued == 0, timeout=5)
    staying = [r for i, r in enumerate(results) if i % 2 == 0]
    leaving = [r for i, r in enumerate(results) if i % 2 == 1]
    assert all(r[:2] == (200, "done") for r in staying), staying
    assert all(r[:2] == (200, "left") for r in leaving), leaving
    assert engine.largest_batch > 8

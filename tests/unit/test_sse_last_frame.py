"""A stream's `Last` frame is the last thing written before the response ends: no keep-alive
follows it, however long the generator takes to wind down after yielding it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from server import sse
from server.settings import Settings

FIRST = sse.event("message_start", {"type": "message_start"})
STOP = sse.event("message_stop", {"type": "message_stop"})


async def _response_text(mark_last: bool) -> str:
    async def frames() -> AsyncIterator[bytes | sse.Last]:
        yield FIRST
        await asyncio.sleep(0.12)  # keep-alives are due while the stream runs
        yield sse.Last(STOP) if mark_last else STOP
        await asyncio.sleep(0.4)  # winding down: the engine stream's cleanup awaits

    app = FastAPI()
    settings = Settings(keepalive_interval_s=0.05)

    @app.get("/stream")
    async def stream() -> object:
        return sse.event_stream(frames(), {}, settings)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/stream")
    return response.text


async def test_nothing_follows_the_last_frame() -> None:
    text = await _response_text(mark_last=True)
    assert text.startswith(FIRST.decode())
    assert ": keep-alive" in text  # they ran before the last frame
    assert text.endswith(STOP.decode())


async def test_unmarked_the_keepalives_run_on_past_it() -> None:
    """Why `Last` exists: without it, keep-alives are written after the final frame."""
    text = await _response_text(mark_last=False)
    assert not text.endswith(STOP.decode())
    assert STOP.decode() + ": keep-alive" in text

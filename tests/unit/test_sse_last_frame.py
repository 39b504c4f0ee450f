"""A stream's `Last` frame is the last thing written before the response ends: no keep-alive
follows it, however long the generator takes to wind down after yielding it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from engines.errors import EngineError
from engines.types import ErrorEvent, Segment, SynthesisDone, TranscriptionDone
from server import sse
from server.routes import audio, speech
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


async def _items(frames: AsyncIterator[bytes | sse.Last]) -> list[bytes | sse.Last]:
    return [item async for item in frames]


def _segment(text: str) -> Segment:
    return Segment(0, 0, 0.0, 1.0, text, [], 0.0, -0.1, 1.0, 0.01)


async def _events(*events: object) -> AsyncIterator[object]:
    for event in events:
        yield event


@pytest.mark.parametrize(
    "ending", [TranscriptionDone("english", 1.0), ErrorEvent(EngineError("the engine stopped"))]
)
async def test_a_transcription_stream_marks_its_last_frame(ending: object) -> None:
    frames = audio._stream_events(_events(_segment(" Hello."), ending), "req")  # type: ignore[arg-type]
    items = await _items(frames)
    assert [isinstance(item, sse.Last) for item in items] == [False, True]


@pytest.mark.parametrize("fails", [False, True])
async def test_a_speech_stream_marks_its_last_frame(fails: bool) -> None:
    async def pieces() -> AsyncIterator[bytes | SynthesisDone]:
        yield b"\x00\x01"
        if fails:
            raise speech.SynthesisFailed(EngineError("the engine stopped"))
        yield SynthesisDone(samples=1, tokens=3)

    items = await _items(speech._sse_events(pieces()))
    assert [isinstance(item, sse.Last) for item in items] == [False, True]

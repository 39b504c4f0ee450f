"""server/heartbeat.py: an engine stream's events in order, None for each silence of `every_s`,
errors after the events before them, token events merged while the consumer is slow, and the
source cancelled when the consumer closes; and the Responses stream repeating
`response.in_progress` on each silence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest

from engines.pool import EnginePool
from engines.types import Event, FinishEvent, TokenEvent, Usage
from server.app import create_app
from server.heartbeat import with_heartbeat
from server.routes import responses as responses_route
from server.settings import Settings
from tests.fakes import FakeEngine


def token(text: str, index: int = 0) -> TokenEvent:
    return TokenEvent(text, [ord(c) for c in text], index)


async def scripted(script: list[Event | float]) -> AsyncIterator[Event]:
    """Each event in turn; a float is a pause of that many seconds."""
    for step in script:
        if isinstance(step, float):
            await asyncio.sleep(step)
        else:
            yield step
            await asyncio.sleep(0)  # one event per loop turn, as from an engine


async def test_events_pass_in_order_without_markers_when_none_is_late() -> None:
    finish = FinishEvent("stop", Usage(3, 2))
    got = [e async for e in with_heartbeat(scripted([token("a"), token("b", 1), finish]), 5.0)]
    assert got == [token("a"), token("b", 1), finish]


async def test_a_marker_for_each_silence_of_every_s() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    got = [e async for e in with_heartbeat(scripted([0.33, token("a"), token("b", 1)]), 0.1)]
    silence = loop.time() - start  # at least 0.33 s; more on a busy machine
    markers = got.index(token("a"))
    assert got[:markers] == [None] * markers and markers >= 2
    assert markers <= silence / 0.1 + 1  # never more often than every_s (timers are not early)
    assert got[markers:] == [token("a"), token("b", 1)]


async def test_an_error_comes_after_the_events_before_it() -> None:
    async def failing() -> AsyncIterator[Event]:
        yield token("a")
        raise RuntimeError("engine gone")

    got: list[Event | None] = []
    with pytest.raises(RuntimeError, match="engine gone"):
        async for event in with_heartbeat(failing(), 5.0):
            got.append(event)
    assert got == [token("a")]


async def test_tokens_queued_while_the_consumer_is_slow_are_merged() -> None:
    events = with_heartbeat(scripted([token("a"), token("b"), token("c", 1), token("d", 1)]), 5.0)
    first = await anext(events)
    await asyncio.sleep(0.05)  # the reader queues the rest meanwhile
    rest = [e async for e in events]
    assert [first, *rest] == [token("a"), token("b"), token("cd", 1)]


async def test_closing_cancels_the_source() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[Event]:
        try:
            while True:
                yield token("x")
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    events = with_heartbeat(endless(), 5.0)
    assert await anext(events) == token("x")
    await events.aclose()
    await asyncio.wait_for(closed.wait(), 1)


async def test_responses_repeat_in_progress_on_each_silence_whatever_the_route_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each silence repeats `response.in_progress`, even when the route's clock says less than
    the interval passed (the marker's timer runs on the loop's clock, which may lag it: judged by
    the route's clock, every other repeat was skipped and the gap doubled, past Codex's idle
    limit). Here the route's clock is frozen, the extreme of that lag."""
    frozen = SimpleNamespace(monotonic=lambda: 1000.0, time=time.time)
    monkeypatch.setattr(responses_route, "time", frozen)
    engine = FakeEngine(context_length=4096, prefill_delay_s=0.3)
    pool = EnginePool([engine])
    app = create_app(Settings(keepalive_interval_s=0.05), pool)
    await pool.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        body = {"model": "fake", "input": "hi", "stream": True}
        response = await http.post("/v1/responses", json=body)
    await pool.drain(timeout=1)
    kinds = [line for line in response.text.split("\r\n") if line.startswith("event: ")]
    first_item = kinds.index("event: response.output_item.added")
    assert kinds[:2] == ["event: response.created", "event: response.in_progress"]
    assert kinds[2:first_item] == ["event: response.in_progress"] * (first_item - 2)
    assert first_item - 2 >= 2  # repeats during the 0.3 s "prefill", none skipped by the clock

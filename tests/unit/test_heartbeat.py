"""server/heartbeat.py: an engine stream's events in order, None for each silence of `every_s`,
errors after the events before them, token events merged while the consumer is slow, and the
source cancelled when the consumer closes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from engines.types import Event, FinishEvent, TokenEvent, Usage
from server.heartbeat import with_heartbeat


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
    got, marked_at = [], [start]
    async for event in with_heartbeat(scripted([0.33, token("a"), 0.01, token("b", 1)]), 0.1):
        got.append(event)
        if event is None:
            marked_at.append(loop.time())
    markers = got.index(token("a"))
    assert got[:markers] == [None] * markers and markers >= 2
    assert got[markers:] == [token("a"), token("b", 1)]  # no marker after 0.01 s
    gaps = [later - earlier for earlier, later in itertools.pairwise(marked_at)]
    assert min(gaps) >= 0.1 * 0.99  # never more often than every_s (timers are not early)


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

"""RequestStream: thread-side pushes, coalescing per choice, paced delivery, nothing lost."""

from __future__ import annotations

import threading
import time

from engines.bridge import RequestStream
from engines.errors import ShuttingDown
from engines.types import ErrorEvent, FinishEvent, TokenEvent, Usage


async def test_tokens_of_different_choices_are_never_merged() -> None:
    stream = RequestStream("r", choices=2)
    for index in (0, 0, 1, 1, 0):
        stream.push(TokenEvent(str(index), [index], index))
    events = await stream.next_events()
    assert [(e.index, e.text) for e in events if isinstance(e, TokenEvent)] == [
        (0, "00"),
        (1, "11"),
        (0, "0"),
    ]


async def test_stream_ends_after_every_choice_finished() -> None:
    stream = RequestStream("r", choices=2)
    stream.push(FinishEvent("stop", Usage(1, 0), 0))
    stream.push(TokenEvent("x", [1], 1))
    stream.push(FinishEvent("length", Usage(1, 1), 1))
    events = [event async for event in stream]
    assert [type(e).__name__ for e in events] == ["FinishEvent", "TokenEvent", "FinishEvent"]


async def test_fail_ends_the_stream_after_what_is_queued_and_cancels_it() -> None:
    stream = RequestStream("r")
    stream.push(TokenEvent("a", [1]))
    stream.fail(ShuttingDown("stopping"))
    stream.push(TokenEvent("b", [2]))  # the engine, before it saw the cancellation
    events = [event async for event in stream]
    assert [type(e).__name__ for e in events] == ["TokenEvent", "ErrorEvent"]
    assert isinstance(events[1], ErrorEvent) and isinstance(events[1].error, ShuttingDown)
    assert stream.cancelled


async def test_fail_after_every_choice_finished_changes_nothing() -> None:
    stream = RequestStream("r")
    stream.push(FinishEvent("stop", Usage(1, 0)))
    stream.fail(ShuttingDown("stopping"))
    assert [type(e).__name__ for e in [event async for event in stream]] == ["FinishEvent"]


async def test_paced_delivery_merges_tokens_and_loses_none() -> None:
    stream = RequestStream("r")

    def engine() -> None:  # a token every 5 ms from another thread, like an engine step loop
        for i in range(60):
            stream.push(TokenEvent(f"{i},", [i]))
            time.sleep(0.005)
        stream.push(FinishEvent("length", Usage(1, 60)))

    threading.Thread(target=engine).start()
    deliveries = []
    async for event in stream.events(min_interval_s=0.05):
        if isinstance(event, TokenEvent):
            deliveries.append(event.token_ids)
    assert [t for batch in deliveries for t in batch] == list(range(60))
    assert len(deliveries) < 15  # ~0.3 s of tokens in ≥ 50 ms steps, not 60 deliveries


async def test_a_step_pushing_to_many_streams_wakes_the_loop_once() -> None:
    """One wake-up per loop for a batch of pushes, however many streams it reaches, and every
    stream still gets its events."""
    import asyncio

    loop = asyncio.get_running_loop()
    streams = [RequestStream(f"r{i}") for i in range(64)]
    scheduled = 0
    original = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal scheduled
        scheduled += 1
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:

        def step() -> None:  # one engine step: a token for every stream
            for i, stream in enumerate(streams):
                stream.push(TokenEvent(str(i), [i]))

        thread = threading.Thread(target=step)
        thread.start()
        thread.join()
        received = [await stream.next_events() for stream in streams]
    finally:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]
    assert scheduled == 1
    assert [[e.token_ids for e in events] for events in received] == [[[i]] for i in range(64)]

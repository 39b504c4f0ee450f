"""Consuming engine streams at the HTTP edge: collecting choices, merging several requests'
streams, and cancelling everything when the client goes away.

Invariant: every EventSource handed to these helpers is either read to its end or cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from fastapi import Request

from engines.types import ErrorEvent, Event, FinishEvent, PromptEvent, TokenEvent, TokenLogprob
from server.errors import APIError
from server.schemas.common import SamplingFields

T = TypeVar("T")


class EventSource(Protocol):
    """What routes read events from: an engine's EventSource, or it seen through metrics."""

    def events(self, min_interval_s: float = ...) -> AsyncIterator[Event]: ...

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def cancel(self) -> None: ...

    def fail(self, error: Exception) -> None: ...


@dataclass
class CollectedChoice:
    """Everything one choice produced (non-streamed responses)."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = "stop"
    completion_tokens: int = 0
    stop_sequence: str | None = None  # the stop string that ended it, when one did
    accepted_prediction_tokens: int = 0


@dataclass
class Collected:
    choices: dict[int, CollectedChoice] = field(default_factory=dict)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    error: Exception | None = None


async def collect(stream: EventSource) -> Collected:
    """Read a request's stream to its end."""
    result = Collected()
    async for event in stream:
        if isinstance(event, TokenEvent):
            choice = result.choices.setdefault(event.index, CollectedChoice())
            choice.text += event.text
            choice.logprobs.extend(event.logprobs)
        elif isinstance(event, PromptEvent):
            result.prompt_logprobs = event.logprobs
        elif isinstance(event, FinishEvent):
            choice = result.choices.setdefault(event.index, CollectedChoice())
            choice.finish_reason = event.reason
            choice.stop_sequence = event.stop_sequence
            choice.completion_tokens = event.usage.completion_tokens
            choice.accepted_prediction_tokens = event.usage.accepted_prediction_tokens
            result.prompt_tokens = event.usage.prompt_tokens
            result.cached_tokens = event.usage.cached_tokens
        elif isinstance(event, ErrorEvent):
            result.error = event.error
    return result


async def merge(streams: list[EventSource], interval_s: float) -> AsyncIterator[tuple[int, Event]]:
    """Events of several streams as they come, tagged with their stream's position."""
    if len(streams) == 1:
        async for event in streams[0].events(interval_s):
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event] | None] = asyncio.Queue()

    async def pump(position: int, stream: EventSource) -> None:
        async for event in stream.events(interval_s):
            await queue.put((position, event))
        await queue.put(None)

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()


async def unless_disconnected(
    request: Request, work: Awaitable[T], streams: list[EventSource]
) -> T | None:
    """Await `work`; if the client disconnects first, cancel `streams` and return None."""
    worker = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({worker, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not worker.done():
            for stream in streams:
                stream.cancel()
            worker.cancel()
    if worker.cancelled() or not worker.done():
        return None
    return worker.result()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def check_limits(fields: SamplingFields, max_stop: int, max_n: int) -> None:
    """Limits that depend on settings (the schema checks the rest)."""
    stops = fields.stop_sequences()
    if len(stops) > max_stop:
        raise APIError(
            400, f"At most {max_stop} stop sequences are allowed, got {len(stops)}", param="stop"
        )
    if fields.choices > max_n:
        raise APIError(400, f"n must be at most {max_n}, got {fields.choices}", param="n")

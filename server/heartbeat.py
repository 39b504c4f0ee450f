"""An engine stream's events with a marker for each silence: `with_heartbeat(events, every_s)`
yields the events, and None whenever `every_s` seconds passed with neither an event nor a
marker (a stream that must send *events*, not SSE comments, while a long prompt prefills: the
Responses stream repeats `response.in_progress` then, for Codex's idle timeout).

Invariants:
- One task reads `events` for the whole stream and one timer, re-armed when it fires, marks
  the silences: nothing is made per event (a task and a timed wait per event cost ~10 us of the
  event loop per token, as much as the rest of a chat chunk's work).
- The reader does not wait for the consumer; token events it queued meanwhile (a slow client)
  are merged here, as the engine stream merges them for a slow reader, so the frames stay few.
- Events come out in order, each once; an error reading `events` is raised to the consumer after
  the events before it. Closing the generator cancels the reader (hence `events`) and the timer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator

from engines.bridge import coalesced
from engines.types import Event


async def with_heartbeat(
    events: AsyncIterator[Event], every_s: float
) -> AsyncGenerator[Event | None, None]:
    reader = _Reader(events, every_s)
    try:
        while True:
            await reader.ready.wait()
            reader.ready.clear()
            for event in coalesced(reader.take()):
                yield event
            if reader.silent:
                reader.silent = False
                yield None
            if reader.ended and not reader.queued:
                if reader.error is not None:
                    raise reader.error
                return
    finally:
        reader.close()


class _Reader:
    def __init__(self, events: AsyncIterator[Event], every_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._every_s = every_s
        self.ready = asyncio.Event()
        self.queued: deque[Event] = deque()
        self.silent = False
        self.ended = False
        self.error: BaseException | None = None
        self._last = self._loop.time()  # the last event or marker
        self._task = asyncio.ensure_future(self._read(events))
        self._timer = self._loop.call_later(every_s, self._tick)

    def take(self) -> list[Event]:
        taken = list(self.queued)
        self.queued.clear()
        return taken

    def close(self) -> None:
        self._timer.cancel()
        self._task.cancel()

    async def _read(self, events: AsyncIterator[Event]) -> None:
        try:
            async for event in events:
                self.queued.append(event)
                self._last = self._loop.time()
                self.ready.set()
        except Exception as exc:  # raised to the consumer, after what came before it
            self.error = exc
        finally:
            self.ended = True
            self.ready.set()

    def _tick(self) -> None:
        now = self._loop.time()
        if now - self._last >= self._every_s:
            self.silent = True
            self._last = now
            self.ready.set()
        self._timer = self._loop.call_later(self._last + self._every_s - now, self._tick)

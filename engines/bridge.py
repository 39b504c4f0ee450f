"""RequestStream: the one bridge between an engine thread and the asyncio side.

Invariants:
- `push` is called only on the engine thread; it never blocks and never drops an event.
- Iteration happens only on the event loop that created the stream.
- When the reader is slower than the engine, consecutive TokenEvents of the same choice are merged
  on the next read (several tokens in one SSE chunk). The stream ends after one FinishEvent per
  choice, or at the first event whose class sets `ends_stream` (an ErrorEvent, a
  transcription's TranscriptionDone); nothing queued after its last event is read.
- `cancel` may be called from anywhere; the engine sees `cancelled` at its next step.
- `fail` (on the loop) ends the stream with an ErrorEvent after what is already queued, without
  waiting for the engine to see it cancelled (the server's drain at shutdown uses it).
- The reader is woken at most once per batch of pushes (not once per token), and may ask for a
  minimum interval between deliveries: on fast devices the event loop's per-chunk work (JSON,
  SSE framing, socket writes) would otherwise compete with the engine thread for the GIL on
  every token.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator

from engines.types import ErrorEvent, Event, FinishEvent, TokenEvent


class _LoopWaker:
    """Wakes readers on one loop. A push adds its stream; the first push since the loop last
    ran the callback schedules it (one `call_soon_threadsafe`, one self-pipe write), and the
    callback sets every pending stream's event: a step that pushes to 256 streams wakes the
    loop once, not 256 times."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[asyncio.Event] = []

    def wake(self, ready: asyncio.Event) -> None:
        with self._lock:
            self._pending.append(ready)
            if len(self._pending) > 1:
                return  # a callback is already on its way
        # RuntimeError: the loop is gone (shutdown), so nobody is left to read.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for ready in pending:
            ready.set()


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker] = (
    weakref.WeakKeyDictionary()
)


def _waker(loop: asyncio.AbstractEventLoop) -> _LoopWaker:
    """The loop's waker (made on the loop's own thread, when a stream is made)."""
    waker = _wakers.get(loop)
    if waker is None:
        waker = _wakers[loop] = _LoopWaker(loop)
    return waker


class RequestStream:
    """Events of one sequence, from the engine thread to one asyncio reader."""

    def __init__(
        self, request_id: str, choices: int = 1, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.request_id = request_id
        self._unfinished_choices = choices
        self._loop = loop or asyncio.get_running_loop()
        self._events: deque[Event] = deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._cancelled = threading.Event()
        self._finished = False
        self._wake_pending = False  # a wake-up is already on its way to the loop
        self._waker = _waker(self._loop)

    # -- engine thread side ------------------------------------------------------------------

    def push(self, event: Event) -> None:
        """Queue an event and wake the reader. Safe to call after the loop has closed."""
        with self._lock:
            self._events.append(event)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._waker.wake(self._ready)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- asyncio side ------------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the engine to stop this sequence at its next step. Idempotent."""
        self._cancelled.set()

    def fail(self, error: Exception) -> None:
        """On the loop: end the stream with `error` after the events already queued, and cancel
        it. A stream whose choices all finished first ends as it would have; what the engine
        pushes after is never read."""
        self.cancel()
        with self._lock:
            self._events.append(ErrorEvent(error))
        self._ready.set()

    async def next_events(self) -> list[Event]:
        """Wait for and return everything queued, with consecutive TokenEvents merged."""
        while True:
            with self._lock:
                pending = list(self._events)
                self._events.clear()
                self._ready.clear()
                self._wake_pending = False
            if pending:
                return coalesced(pending)
            await self._ready.wait()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def events(self, min_interval_s: float = 0.0) -> AsyncIterator[Event]:
        """Every event until the stream ends; deliveries at least `min_interval_s` apart."""
        last_delivery = 0.0
        while not self._finished:
            if min_interval_s > 0:
                wait = last_delivery + min_interval_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            batch = await self.next_events()
            last_delivery = time.monotonic()
            for event in batch:
                if isinstance(event, FinishEvent):
                    self._unfinished_choices -= 1
                    self._finished = self._unfinished_choices <= 0
                elif getattr(event, "ends_stream", False):
                    self._finished = True
                yield event
                if self._finished:
                    return


def coalesced(events: list[Event]) -> list[Event]:
    """`events` with each run of consecutive TokenEvents of one choice merged into one (a slow
    reader gets fewer, larger events; nothing is lost or reordered)."""
    merged: list[Event] = []
    for event in events:
        previous = merged[-1] if merged else None
        if (
            isinstance(event, TokenEvent)
            and isinstance(previous, TokenEvent)
            and previous.index == event.index
        ):
            previous.merge(event)
        else:
            merged.append(event)
    return merged

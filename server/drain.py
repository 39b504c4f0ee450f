"""The drain at shutdown: from the moment uvicorn starts shutting down, new work is refused and
work in flight has `drain_timeout_s` to finish; what is still running then is cut, and answered
in its route's own shape.

Why here and not in the lifespan: uvicorn runs the lifespan's shutdown only after it has stopped
waiting for the requests in flight, and when that wait (`timeout_graceful_shutdown`) runs out it
cancels them; a request cancelled before its response started is answered by uvicorn itself, a
plain-text 500. So `DrainingServer` starts the drain with uvicorn's shutdown, and the drain ends
the work still running itself, before uvicorn's deadline.

Invariants:
- Once begun, the pool refuses new work: ShuttingDown, a 503 with `Retry-After`.
- Every engine stream read through `server.serving`'s helpers is tracked while it is read. At
  the cut (`drain_timeout_s` after the start) each one still tracked is failed with
  ShuttingDown, so its reader answers as for any engine error after acceptance: a 503 in the
  route's shape, or the stream's own error event and end. A stream tracked after the cut is
  failed at once; work that ends before the cut is answered as usual.
- uvicorn's and sse-starlette's own deadlines (`backstop_s`) come a second or more after the
  cut: they are only a backstop, for work that did not end when cut.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import uvicorn

from engines.errors import ShuttingDown
from engines.pool import EnginePool

logger = logging.getLogger(__name__)


class Failable(Protocol):
    def fail(self, error: Exception) -> None: ...


def backstop_s(grace_s: float) -> int:
    """uvicorn's and sse-starlette's shutdown deadline for a drain of `grace_s`: late enough
    that work cut at the end of the drain has answered first."""
    return math.ceil(grace_s) + 1


class Drain:
    """One server's drain (`app.state.drain`): `begin` it when shutdown starts."""

    def __init__(self, pool: EnginePool, grace_s: float) -> None:
        self._pool = pool
        self.grace_s = grace_s
        self._streams: set[Failable] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.cut = False

    def begin(self) -> None:
        """On the loop: refuse new work, and cut what still runs `grace_s` from now. Idempotent."""
        if self._timer is not None:
            return
        self._pool.begin_drain()
        self._timer = asyncio.get_running_loop().call_later(self.grace_s, self._cut)
        logger.info("draining: work in flight has %.1f s to finish", self.grace_s)

    @contextmanager
    def tracking(self, streams: Sequence[Failable]) -> Iterator[None]:
        """While the body runs, `streams` are failed with ShuttingDown if the drain is cut."""
        if self.cut:
            self._fail(streams)
        self._streams.update(streams)
        try:
            yield
        finally:
            self._streams.difference_update(streams)

    def _cut(self) -> None:
        self.cut = True
        if self._streams:
            logger.warning(
                "drain period over (%.1f s): %d engine streams still running end with 503",
                self.grace_s,
                len(self._streams),
            )
        self._fail(list(self._streams))

    def _fail(self, streams: Sequence[Failable]) -> None:
        for stream in streams:
            stream.fail(
                ShuttingDown(
                    "The server is shutting down and this request did not finish within its "
                    f"drain period ({self.grace_s:g} s); retry it"
                )
            )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, starting the app's drain as its own shutdown starts."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self._drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._drain.begin()
        await super().shutdown(sockets)

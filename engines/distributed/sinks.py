"""Where a replicated scheduler's events go on each rank. Every rank runs the same scheduler
steps; rank 0's sinks deliver to the clients' streams, a follower's go nowhere. Both fold each
token into the running digest the ranks compare, so ranks that drift apart are caught.

Invariant: a sink's `cancelled` is always false — cancellation reaches every rank only as a
plan's removal, in the same step on each.
"""

from __future__ import annotations

from engines.bridge import RequestStream
from engines.distributed.plan import TokenDigest
from engines.types import ErrorEvent, Event, FinishEvent, TokenEvent


class LeaderSink:
    """A request's stream on rank 0, seen by the scheduler: never 'cancelled' (cancellation
    travels as a plan's removal), tokens counted into the digest."""

    def __init__(self, stream: RequestStream, choices: int, digest: TokenDigest) -> None:
        self.stream = stream
        self.uid = -1
        self.open_choices = choices
        self._digest = digest

    @property
    def cancelled(self) -> bool:
        return False

    def push(self, event: Event) -> None:
        if isinstance(event, TokenEvent):
            self._digest.add(self.uid, event.token_ids)
        elif isinstance(event, FinishEvent):
            self.open_choices -= 1
        elif isinstance(event, ErrorEvent):
            self.open_choices = 0
        self.stream.push(event)


class FollowerSink:
    """A follower's stand-in for a stream: events go nowhere; tokens go into the digest."""

    cancelled = False

    def __init__(self, digest: TokenDigest) -> None:
        self.uid = -1  # set at insert: uids are assigned in the same order on every rank
        self._digest = digest

    def push(self, event: Event) -> None:
        if isinstance(event, TokenEvent):
            self._digest.add(self.uid, event.token_ids)

"""Which inputs go into the next forward pass: fair across requests, padded by length bucket.

Each request's pending inputs are taken shortest first. A pass takes inputs round-robin across
the requests in arrival order — one from each in turn — until it has `max_rows` inputs or
another would push its padded size past `max_tokens`. So a request of 2,048 short inputs and a
request of one input that arrives while it runs share the next pass: the single input waits for
at most one pass, never for the whole large request.

The chosen inputs are then grouped by bucket (their length rounded up to a power of two, at
least `MIN_BUCKET`): one forward pass per bucket, every row padded to that bucket, so a pass
wastes less than half its tokens on padding and shapes repeat from pass to pass (devices that
plan kernels per shape plan few of them).

Invariants: every input of every request is eventually chosen exactly once; a pass is never
empty while inputs are pending (one input alone always fits: the edge refused longer ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

MIN_BUCKET = 16


def bucket(length: int) -> int:
    """The padded length of a row of `length` tokens."""
    size = MIN_BUCKET
    while size < length:
        size *= 2
    return size


@dataclass
class Pending:
    """One request's inputs still to run: `lengths[i]` tokens for input i; `order` holds the
    indices not yet chosen, longest first (taken from the end)."""

    lengths: Sequence[int]
    order: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.order = sorted(range(len(self.lengths)), key=lambda i: -self.lengths[i])


def choose(requests: Sequence[Pending], max_rows: int, max_tokens: int) -> list[tuple[int, int]]:
    """(request position, input index) pairs for the next pass, removed from their `order`."""
    chosen: list[tuple[int, int]] = []
    longest = 0
    blocked: set[int] = set()  # requests whose next input would not fit this pass
    while len(chosen) < max_rows and len(blocked) < len(requests):
        for position, request in enumerate(requests):
            if position in blocked or len(chosen) >= max_rows:
                continue
            if not request.order:
                blocked.add(position)
                continue
            index = request.order[-1]
            padded = bucket(max(longest, request.lengths[index]))
            if chosen and padded * (len(chosen) + 1) > max_tokens:
                blocked.add(position)
                continue
            request.order.pop()
            chosen.append((position, index))
            longest = max(longest, request.lengths[index])
    return chosen


def by_bucket(
    chosen: list[tuple[int, int]], requests: Sequence[Pending]
) -> list[tuple[int, list[tuple[int, int]]]]:
    """The chosen inputs grouped by bucket, shortest bucket first: (bucket, inputs)."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for position, index in chosen:
        groups.setdefault(bucket(requests[position].lengths[index]), []).append((position, index))
    return sorted(groups.items())

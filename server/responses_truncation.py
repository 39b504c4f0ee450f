"""`truncation: "auto"` on `POST /v1/responses`: a conversation longer than the model's context
drops its oldest turns until it fits, as OpenAI's API does ("dropping items from the beginning
of the conversation"), instead of the 400 `context_length_exceeded` of `"disabled"`.

Invariants:
- The conversation's leading system and developer messages always stay (an agent's standing
  instructions; `instructions` is not an item and stays too).
- Turns are dropped whole and oldest first: a turn begins at a user message (or a
  `compaction` item, which stands for user messages: server/schemas/responses.py) and holds
  what follows up to the next one (the assistant's messages, its calls and their outputs), so
  no call loses its output and no output its call. The last turn is never dropped.
- The fewest turns that make the prompt fit are dropped. Fitting is decided by the chat path's
  own check (render, tokenize, count against the context with the output's room), probed by a
  binary search over the number dropped: log2(turns) renders, not one per turn.
- Only the prompt is truncated: the stored conversation (`previous_response_id`, input items)
  keeps every item, as OpenAI's does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from server.errors import APIError
from server.schemas.responses import CompactionItem, InputItem, MessageItem

T = TypeVar("T")

TOO_LONG = "context_length_exceeded"


async def fitted(items: list[InputItem], prepare: Callable[[list[int]], Awaitable[T]]) -> T:
    """`prepare` of the most items of `items` that fit (by their indices, in order): all of
    them, else the conversation less its fewest oldest turns. `prepare` raises an APIError with
    code `context_length_exceeded` where a selection does not fit; its other errors pass
    through. Where even the last turn alone does not fit, its error is raised."""
    try:
        return await prepare(list(range(len(items))))
    except APIError as exc:
        if exc.code != TOO_LONG:
            raise
        error = exc
    lead, starts = _turns(items)
    fits: T | None = None
    low, high = 1, len(starts) - 1  # how many turns to drop
    while low <= high:
        dropped = (low + high) // 2
        try:
            fits = await prepare(lead + list(range(starts[dropped], len(items))))
        except APIError as exc:
            if exc.code != TOO_LONG:
                raise
            error, low = exc, dropped + 1
        else:
            high = dropped - 1
    if fits is None:
        raise error
    return fits


def _turns(items: list[InputItem]) -> tuple[list[int], list[int]]:
    """The indices of the leading system and developer messages, and where each turn begins
    (each user message or compaction after them)."""
    lead: list[int] = []
    for k, item in enumerate(items):
        if not (isinstance(item, MessageItem) and item.role in ("system", "developer")):
            break
        lead.append(k)
    starts = [k for k, item in enumerate(items) if k >= len(lead) and _begins_turn(item)]
    return lead, starts


def _begins_turn(item: InputItem) -> bool:
    """A user message, or a compaction (it stands for user messages, then its summary)."""
    is_user = isinstance(item, MessageItem) and item.role == "user"
    return is_user or isinstance(item, CompactionItem)

"""SSE framing for OpenAI streams: JSON chunks, an in-stream error event, the `[DONE]` sentinel,
and comment keep-alives while nothing else is sent (so clients with read timeouts hold on)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

DONE = "[DONE]"
KEEPALIVE_INTERVAL_S = 10.0


def data(payload: dict[str, Any]) -> dict[str, str]:
    """One `data:` event carrying `payload` as compact JSON."""
    return {"data": json.dumps(payload, separators=(",", ":"), ensure_ascii=False)}


def done() -> dict[str, str]:
    return {"data": DONE}


def _keepalive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive")


def event_stream(
    events: AsyncIterator[dict[str, str]], headers: Mapping[str, str], grace_period_s: float
) -> EventSourceResponse:
    """The streaming response; `grace_period_s` lets streams in flight finish at shutdown."""
    return EventSourceResponse(
        events,
        headers=dict(headers),
        ping=KEEPALIVE_INTERVAL_S,
        ping_message_factory=_keepalive,
        shutdown_grace_period=grace_period_s,
    )

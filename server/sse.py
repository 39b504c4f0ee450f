"""SSE framing for OpenAI streams: JSON chunks, an in-stream error event, the `[DONE]` sentinel,
and comment keep-alives while nothing else is sent (so clients with read timeouts hold on); and
for Anthropic's, whose every event is named (`event:` line) and whose keep-alive is a `ping`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from server.settings import Settings

DONE = "[DONE]"


def data(payload: dict[str, Any]) -> dict[str, str]:
    """One `data:` event carrying `payload` as compact JSON."""
    return {"data": json.dumps(payload, separators=(",", ":"), ensure_ascii=False)}


def done() -> dict[str, str]:
    return {"data": DONE}


def event(name: str, payload: dict[str, Any]) -> dict[str, str]:
    """One named event: an `event: name` line, then `payload` as a `data:` line."""
    return {"event": name, **data(payload)}


def _keepalive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive")


def event_stream(
    events: AsyncIterator[dict[str, str]],
    headers: Mapping[str, str],
    settings: Settings,
    keepalive: Callable[[], ServerSentEvent] = _keepalive,
) -> EventSourceResponse:
    """The streaming response: a `keepalive` (by default a comment) every
    `keepalive_interval_s` (also while a long prompt is prefilled); streams in flight may finish
    during the drain at shutdown."""
    return EventSourceResponse(
        events,
        headers=dict(headers),
        ping=settings.keepalive_interval_s,
        ping_message_factory=keepalive,
        shutdown_grace_period=settings.drain_timeout_s,
    )

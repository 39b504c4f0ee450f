"""SSE framing for OpenAI streams: JSON chunks, an in-stream error event, the `[DONE]` sentinel,
and comment keep-alives while nothing else is sent (so clients with read timeouts hold on); and
for Anthropic's, whose every event is named (`event:` line) and whose keep-alive is a `ping`.

Frames are encoded to bytes where they are made (the same bytes sse-starlette's
`ServerSentEvent` writes: `data: …` lines ended by CRLF, a blank line after), so the response
writes them as they are: at hundreds of concurrent streams every token is a frame, and the
event loop's work per frame bounds the server's token rate (bench/edge_overhead.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message, Send

from server.drain import backstop_s
from server.settings import Settings

SEP = "\r\n"  # sse-starlette's separator
DONE = "[DONE]"
SLOT = "\x00slot\x00"  # where a Template's text goes
NUMBER = "\x00number\x00"  # where a Template's integer goes (a sequence number), if anywhere
_SLOT_JSON = json.dumps(SLOT).encode()
_NUMBER_JSON = json.dumps(NUMBER).encode()


def data(payload: dict[str, Any]) -> bytes:
    """One `data:` event carrying `payload` as compact JSON (one line: JSON escapes newlines)."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}{SEP}{SEP}".encode()


def done() -> bytes:
    return f"data: {DONE}{SEP}{SEP}".encode()


class Template:
    """Frames of one payload that differ only in one string and, optionally, one integer: the
    payload holds `SLOT` once (each frame JSON-encodes just its text there; per token, the whole
    payload would otherwise be encoded again) and may hold `NUMBER` once after it (a sequence
    number, written as its digits). With `name`, the frames are named events (`event`), else
    `data` frames. ValueError unless the markers are held so (a client's string, a model name
    say, could be one of them too)."""

    def __init__(self, payload: dict[str, Any], name: str | None = None) -> None:
        frame = data(payload) if name is None else event(name, payload)
        before, found, after = frame.partition(_SLOT_JSON)
        if not found or _SLOT_JSON in after:
            raise ValueError("the payload must hold SLOT exactly once")
        if _NUMBER_JSON in before or after.count(_NUMBER_JSON) > 1:
            raise ValueError("the payload may hold NUMBER once, after SLOT")
        self._before = before
        self._middle, numbered, self._tail = after.partition(_NUMBER_JSON)
        self._numbered = bool(numbered)

    def __call__(self, text: str, number: int = 0) -> bytes:
        encoded = json.dumps(text, ensure_ascii=False).encode()
        if self._numbered:
            return self._before + encoded + self._middle + str(number).encode() + self._tail
        return self._before + encoded + self._middle


def templated(payload_for: Callable[[str], dict[str, Any]]) -> Callable[[str], bytes]:
    """`data` frames of `payload_for(text)`, from a Template when one can be made (else each
    frame encoded whole: a client's string in the payload is the slot marker itself)."""
    try:
        return Template(payload_for(SLOT))
    except ValueError:
        return lambda text: data(payload_for(text))


def event(name: str, payload: dict[str, Any]) -> bytes:
    """One named event: an `event: name` line, then `payload` as a `data:` line. `name` is one
    of the server's own event types (never client text), so it holds no line break."""
    return f"event: {name}{SEP}".encode() + data(payload)


def _keepalive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive")


@dataclass(frozen=True)
class Last:
    """A stream's last frame, as its generator yields it: nothing but the response's end is
    written after it. (sse-starlette's keep-alive task runs beside the stream and would
    otherwise write a keep-alive while the generator winds down after its last frame — its
    cleanup closes the engine stream, and awaits — so a `ping` could follow `message_stop`,
    or a comment `[DONE]`.)"""

    frame: bytes


class _EventSourceResponse(EventSourceResponse):
    """sse-starlette's response, with two changes:
    - without its per-send cancel scope when no send timeout is set (mlxd sets none):
      `anyio.move_on_after(None)` around every frame guards nothing, yet entering and leaving
      it was ~10% of the event loop's time at 256 streams;
    - a `Last` frame ends the keep-alives: it is sent holding the lock keep-alives are sent
      under, and every keep-alive after it is dropped (invariant: once `_ended`, only the
      response's closing message is sent)."""

    def __init__(self, content: AsyncIterator[bytes | Last], **options: Any) -> None:
        self._ended = False
        super().__init__(self._marked(content), **options)

    async def _marked(self, events: AsyncIterator[bytes | Last]) -> AsyncIterator[bytes]:
        try:
            async for item in events:
                if not isinstance(item, Last):
                    yield item
                    continue
                async with self._send_lock:  # no keep-alive between this frame and `_ended`
                    yield item.frame
                    self._ended = True
        finally:  # closed early (a failed send): the route's generator cleans up now, not at GC
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self._ended and message.get("more_body"):
            return  # a keep-alive due after the last frame
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


def event_stream(
    events: AsyncIterator[bytes | Last],
    headers: Mapping[str, str],
    settings: Settings,
    keepalive: Callable[[], ServerSentEvent] = _keepalive,
) -> EventSourceResponse:
    """The streaming response: a `keepalive` (by default a comment) every
    `keepalive_interval_s` (also while a long prompt is prefilled) until the stream's `Last`
    frame, if it marks one; streams in flight may finish
    during the drain at shutdown, and one the drain cuts ends with its error event
    (`server.drain`) before sse-starlette's own shutdown deadline would close it unended."""
    return _EventSourceResponse(
        events,
        headers=dict(headers),
        ping=settings.keepalive_interval_s,
        ping_message_factory=keepalive,
        shutdown_grace_period=backstop_s(settings.drain_timeout_s),
    )

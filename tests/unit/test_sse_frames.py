"""server/sse.py encodes frames itself: the bytes must be exactly those sse-starlette's own
`ServerSentEvent` writes for the same event, whatever the payload holds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sse_starlette import ServerSentEvent

from server import sse

PAYLOADS: list[dict[str, Any]] = [
    {"choices": [{"delta": {"content": "plain"}}]},
    {"text": 'line\nbreak\r\nand "quotes" \\ back\tslash'},
    {"text": "naïve café 日本語 🙂 \u2028 \u0085 \x00"},
    {"nested": {"list": [1, 2.5, None, True], "empty": {}}},
]


def _library(payload: dict[str, Any], event: str | None = None) -> bytes:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return ServerSentEvent(text, event=event).encode()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_data_frames_are_the_librarys_bytes(payload: dict[str, Any]) -> None:
    assert sse.data(payload) == _library(payload)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_named_events_are_the_librarys_bytes(payload: dict[str, Any]) -> None:
    name = "content_block_delta"
    assert sse.event(name, payload) == _library(payload, event=name)


def test_done_is_the_librarys_bytes() -> None:
    assert sse.done() == ServerSentEvent("[DONE]").encode() == b"data: [DONE]\r\n\r\n"


TEXTS = ["", "Hello", ' "quoted" \\ \n\r\t', "naïve 日本語 🙂 \u2028", "\x00slot\x00 inside"]


@pytest.mark.parametrize("text", TEXTS)
def test_template_frames_are_whole_frames(text: str) -> None:
    def payload(content: str) -> dict[str, Any]:
        return {"id": "c-1", "choices": [{"delta": {"content": content}, "logprobs": None}]}

    assert sse.Template(payload(sse.SLOT))(text) == sse.data(payload(text))


@pytest.mark.parametrize(
    "payload", [{"text": "no slot"}, {"model": sse.SLOT, "delta": {"content": sse.SLOT}}]
)
def test_a_template_needs_exactly_one_slot(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly once"):
        sse.Template(payload)
